"""--help of every entry point runs before torch and open_clip are imported, lists this project's flags first
with the meaning they have in that command and no flag twice; a mistake is one error line with exit status 2."""
import json
import re
import subprocess
import sys

import pytest

# Runs a module as `python -m` does, then prints which heavy packages that imported (its --help exits first).
_WRAPPER = """
import json, runpy, sys
module = sys.argv[1]
sys.argv = [module] + sys.argv[2:]
code = 0
try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
except SystemExit as stop:
    code = stop.code
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "open_clip", "open_clip_ext", "torchvision"})
print("IMPORTED " + json.dumps(heavy), file=sys.stderr)
sys.exit(code)
"""

STAGES = {
    "training_ext.main_distill_rope": "The student that trains",
    "training_ext.main_distill_cope": "The student that trains",
    "training_ext.main_context_finetune_rope": "The CLIP that fine-tunes",
    "training_ext.main_context_finetune_cope": "The CLIP that fine-tunes",
}


def _run(module, *argv):
    result = subprocess.run([sys.executable, "-c", _WRAPPER, module, *argv], capture_output=True, text=True,
                            timeout=300)
    imported = json.loads(re.search(r"^IMPORTED (.*)$", result.stderr, flags=re.M).group(1))
    return result, imported


@pytest.mark.slow
@pytest.mark.parametrize("module", sorted(STAGES))
def test_stage_help_is_light_and_lists_our_flags_first(module):
    result, imported = _run(module, "--help")
    assert result.returncode == 0, result.stderr
    assert imported == [], f"--help imported {imported}"
    shown = result.stdout
    assert f"python -m {module}" in shown
    groups = re.findall(r"^(\S[^\n]*):$", shown, flags=re.M)
    assert "this project's flags" in groups[0] and "open_clip_train flags" in groups[-1], groups
    definitions = re.findall(r"^  (--[a-z0-9-]+)", shown, flags=re.M)
    assert definitions.count("--dataset-type") == 1 and definitions.count("--model") == 1
    assert len(definitions) == len(set(definitions))
    model_help = shown[shown.index("  --model"):shown.index("  --pretrained")]
    assert STAGES[module] in model_help and "vision backbone" not in model_help


@pytest.mark.slow
@pytest.mark.parametrize("module", ["training_ext.main", "training_ext.eval"])
def test_other_entry_points_help_is_light(module):
    result, imported = _run(module, "--help")
    assert result.returncode == 0, result.stderr
    assert imported == [], f"--help imported {imported}"
    assert "--model" in result.stdout


@pytest.mark.slow
def test_a_mistake_is_one_error_line_with_status_2():
    result, _ = _run("training_ext.main_distill_rope", "--model", "tiny-clip-rope-24", "--teacher-model", "tiny-clip")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if not line.startswith("IMPORTED")]
    assert len(lines) == 1 and lines[0].startswith("python -m training_ext.main_distill_rope: error: --model")
    assert "tiny-clip-rope-248" in lines[0]
