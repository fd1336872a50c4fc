"""The package layout's rules, read from the source: every import statement, deferred ones included."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("open_clip_ext", "training_ext")
TRAINING = ("engine", "stages", "data", "common")
OFFLINE = ("prep", "eval", "demo")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph():
    """{module: set of project modules it imports, at module level or inside functions (a deferred import is
    still a dependency)}."""
    graph = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            module = _module_name(path)
            targets = set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    targets |= {alias.name for alias in node.names}
                elif isinstance(node, ast.ImportFrom):
                    source = _resolve(module, node, path.name == "__init__.py")
                    targets.add(source)
                    targets |= {f"{source}.{alias.name}" for alias in node.names}
            graph[module] = {t for t in targets if t.split(".")[0] in PACKAGES and t != module}
    known = set(graph)
    return {m: {t for t in ts if t in known} for m, ts in graph.items()}


def _subpackage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if parts[0] == "training_ext" and len(parts) > 2 else ""


def find_cycle(edges):
    """One import cycle as a list of modules (first == last), or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle_among_project_modules():
    graph = import_graph()
    # a package's __init__ importing its own submodules is not a cycle of logic; drop parent edges
    edges = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}
    assert find_cycle(edges) is None, " -> ".join(find_cycle(edges))


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_training_code_never_imports_offline_tools():
    graph = import_graph()
    bad = sorted(f"{m} -> {t}" for m, ts in graph.items() if _subpackage(m) in TRAINING
                 for t in ts if _subpackage(t) in OFFLINE)
    assert not bad, bad


def test_common_imports_only_common():
    graph = import_graph()
    bad = sorted(f"{m} -> {t}" for m, ts in graph.items() if _subpackage(m) == "common"
                 for t in ts if t.startswith("training_ext") and _subpackage(t) not in ("common", ""))
    assert not bad, bad


def test_top_level_of_training_ext_holds_only_entry_points():
    top = sorted(p.stem for p in (ROOT / "training_ext").glob("*.py"))
    assert top == ["__init__", "main", "main_context_finetune_cope", "main_context_finetune_rope", "main_distill_cope",
                   "main_distill_rope", "synthetic"], top


def test_the_graph_sees_known_imports():
    """The rules above are only worth something if the graph sees imports: a known edge must be in it."""
    graph = import_graph()
    assert "training_ext.engine.checkpoint" in graph["training_ext.engine.loop"]
    assert "open_clip_ext.convert" in graph["open_clip_ext.patches"]
