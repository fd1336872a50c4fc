"""`make gpu-check`: everything that needs a CUDA GPU, in one run and one table (meant to take <= 5 min on an H100).

    PY=python3 make gpu-check                                 # in an existing interpreter; builds no .venv
    PYTHONPATH=. python3 scripts/gpu_check.py --out gpu_check_out

Without a CUDA GPU it prints one line and exits 0. On a GPU it records the torch, Triton, CUDA and GPU versions, then
  1. the GPU tests: tests/test_gpu.py and the Triton kernels against the PyTorch op at L = 248 in fp32 and bf16
     (tests/open_clip_ext/test_cope_triton.py), in one pytest process; the fused Triton kernels become the CUDA
     default only after these pass (open_clip_ext/kernels/dispatch.py);
  2. scripts/bench_text_tower.py (imported; bf16 autocast, batch 128, context 248), each run against stock open_clip
     in the same run: ViT-B-16 text size with RoPE, CoPE on the PyTorch op and on Triton; one ViT-L-14 row (CoPE
     on the PyTorch op); ViT-B-16 compiled stock, RoPE and CoPE op (last: compiling takes the longest);
  3. the padding-free evaluation ratio: scripts/bench_eval.py --padding-free (imported; ViT-B-16-rope-248, bf16
     autocast, batch 256, 4096 captions per length mix): captions/s of evaluation's padding-free caption encoding
     against the padded one, on a coco-like and a sharegpt4v-like length mix, with met/MISSED against its targets
     (set for CPU: >= 3x and >= 1.3x); it runs before the compiled rows of 2.
A part is not started once --budget-s has passed (it is listed as not run). The table (pass/fail per test; step
time, encode throughput, CUDA peak memory and TFLOP/s as ratios to stock with met/MISSED against the targets of
bench_text_tower.TARGETS) is printed and written to OUT/gpu_check.md and OUT/gpu_check.json. Exit status 1 when a
test fails or a part errs; a MISSED target is a measurement, not a failure.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ElementTree
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# A checkout runs without being installed: the project and the sibling bench script import from here.
for _path in (str(ROOT), str(ROOT / "scripts")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import torch  # noqa: E402

GPU_TESTS = ("tests/test_gpu.py",
             "tests/open_clip_ext/test_cope_triton.py::test_triton_kernels_match_pytorch_function_on_gpu")
BENCH_FLAGS = ("--device", "cuda", "--precision", "amp_bf16", "--batch-size", "128", "--context-length", "248",
               "--rounds", "3", "--warmup", "1")
RATIOS = (("step_s", "step"), ("encode_captions_per_s", "encode"), ("peak_bytes", "peak"), ("tflops", "TFLOP/s"))
EVAL_FLAGS = ("--padding-free", "--device", "cuda", "--precision", "amp_bf16", "--model", "ViT-B-16-rope-248",
              "--text-batch-size", "256", "--captions", "4096", "--workers", "4", "--repeats", "2")


def versions() -> dict:
    """torch, its CUDA build, Triton, the GPU and its driver, Python, open_clip and the checkout's commit."""
    def attempt(get):
        try:
            return get()
        except Exception as error:  # a missing piece is recorded, not fatal: the record says what was there
            return f"unavailable ({type(error).__name__}: {error})"

    def run(*command):
        return subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT).stdout.strip()

    return {
        "torch": torch.__version__, "cuda_build": torch.version.cuda,
        "triton": attempt(lambda: __import__("triton").__version__),
        "open_clip": attempt(lambda: __import__("open_clip").__version__),
        "gpu": attempt(lambda: torch.cuda.get_device_name(0)),
        "capability": attempt(lambda: ".".join(map(str, torch.cuda.get_device_capability(0)))),
        "driver": attempt(lambda: run("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader")),
        "python": platform.python_version(), "commit": attempt(lambda: run("git", "rev-parse", "--short", "HEAD")),
        "OPEN_CLIP_EXT_COPE_IMPL": os.environ.get("OPEN_CLIP_EXT_COPE_IMPL", "(unset)"),
    }


def run_gpu_tests(out: Path, timeout_s: float) -> list:
    """The GPU tests in one pytest process from the repo root, as table rows (``junit_rows``)."""
    junit = out / "gpu_tests.xml"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))))
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
                           *GPU_TESTS], cwd=ROOT, env=env, timeout=timeout_s)
    return junit_rows(junit, done.returncode)


def junit_rows(junit: Path, returncode: int) -> list:
    """One row per test of pytest's JUnit XML (pass, fail or skipped, with the first line of the reason), plus a
    failing row when pytest itself failed (no report, or an exit status other than 0 and 1)."""
    rows = []
    cases = ElementTree.parse(junit).iter("testcase") if junit.exists() else ()
    for case in cases:
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        problem = next((child for child in case if child.tag in ("failure", "error", "skipped")), None)
        if problem is None:
            rows.append({"check": name, "result": "pass", "ok": True})
            continue
        verdict = "skipped" if problem.tag == "skipped" else "fail"
        reason = (problem.get("message") or "").strip().splitlines()[:1]
        rows.append({"check": name, "result": ": ".join([verdict] + [r[:160] for r in reason]),
                     "ok": problem.tag == "skipped"})
    if returncode not in (0, 1) or not rows:  # 1: a test failed (listed above); anything else is pytest's own
        rows.append({"check": "GPU tests", "result": f"fail: pytest exited {returncode}", "ok": False})
    return rows


def bench_rows(base: str, results: dict) -> list:
    """Rows of one bench_text_tower run: every row but stock as ratios to stock, with its targets met/MISSED."""
    from bench_text_tower import target_checks

    stock, checks, rows = results["stock"], target_checks(results), []
    for name, measured in results.items():
        if name in ("stock", "length_mix"):
            continue
        ratios = {label: (measured[key] / stock[key] if measured.get(key) is not None and stock.get(key) else None)
                  for key, label in RATIOS}
        mine = [c for c in checks if c["row"] == name]
        targets = "; ".join(f"{c['metric']} {c['ratio']:.2f}x {c['target']}: {'met' if c['met'] else 'MISSED'}"
                            for c in mine)
        result = ("MISSED" if not all(c["met"] for c in mine) else "met") if mine else "measured"
        rows.append({"check": f"{base} {name}", "result": result, "ok": True, "ratios": ratios, "targets": targets})
    return rows


def _bench(base: str, rows: list, *flags: str) -> list:
    """bench_text_tower.main at ``base`` text size for ``rows`` (stock is always run), as table rows."""
    import bench_text_tower

    return bench_rows(base, bench_text_tower.main(["--base", base, *BENCH_FLAGS, "--rows", ",".join(rows), *flags]))


def padding_free_rows(report: dict) -> list:
    """Rows of one ``bench_eval.py --padding-free`` run: per length mix, padding-free over padded captions/s with
    met/MISSED against the mix's target, both rates and the largest feature difference."""
    rows = []
    for mix, r in report["mixes"].items():
        verdict = "met" if r["met"] else "MISSED"
        rows.append({"check": f"padding-free eval {mix} ({report['model']}, {report['precision']})", "result": verdict,
                     "ok": True, "targets": f"captions/s {r['ratio']:.2f}x {r['target']}: {verdict} (padded "
                                            f"{r['padded_captions_per_s']:.0f}, padding-free "
                                            f"{r['padding_free_captions_per_s']:.0f}; max |diff| "
                                            f"{r['max_abs_diff']:.1e})"})
    return rows


def _padding_free_eval(*flags: str) -> list:
    """bench_eval.main in its padding-free mode (EVAL_FLAGS, then ``flags``, which override them), as table rows."""
    import bench_eval

    return padding_free_rows(bench_eval.main([*EVAL_FLAGS, *flags]))


def render(info: dict, rows: list, seconds: dict) -> str:
    """The report as Markdown: versions, then one table of every check."""
    lines = ["# gpu-check", "", " | ".join(f"{k}: {v}" for k, v in info.items()), "",
             "| check | result | " + " | ".join(f"{label} /stock" for _, label in RATIOS) + " | targets |",
             "|---|---|" + "---|" * len(RATIOS) + "---|"]
    for row in rows:
        ratios = row.get("ratios", {})
        cells = [f"{ratios[label]:.2f}x" if ratios.get(label) is not None else "" for _, label in RATIOS]
        lines.append(f"| {row['check']} | {row['result']} | " + " | ".join(cells) + f" | {row.get('targets', '')} |")
    lines += ["", "seconds per part: " + ", ".join(f"{part} {s:.0f}" for part, s in seconds.items())]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_check_out", help="folder for gpu_check.md / .json (default %(default)s)")
    parser.add_argument("--budget-s", type=float, default=300.0,
                        help="no part starts after this many seconds (default %(default)s)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    """Run the check; returns the exit status (0 without a GPU)."""
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print(f"gpu-check: no CUDA GPU visible to torch {torch.__version__} (CUDA build {torch.version.cuda}): "
              "nothing to check")
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start, info, rows, seconds = time.monotonic(), versions(), [], {}
    from open_clip_ext.kernels.dispatch import triton_problem

    triton_missing = triton_problem("cuda", 248)
    # In the order of what the Triton decision needs most; the compiled rows (slow to compile) come last.
    parts = {
        "GPU tests": lambda left: run_gpu_tests(out, left),
        "ViT-B-16 bench": lambda left: _bench("ViT-B-16", ["rope", "cope-torch"] + ([] if triton_missing else
                                                                                   ["cope-triton"])),
        "ViT-L-14 bench": lambda left: _bench("ViT-L-14", ["cope-torch"]),
        "padding-free eval": lambda left: _padding_free_eval(),
        "ViT-B-16 compiled bench": lambda left: _bench("ViT-B-16", ["stock+c", "rope+c", "cope-torch+c"], "--compile"),
    }
    if triton_missing:
        rows.append({"check": "ViT-B-16 cope-triton", "result": f"not run: {triton_missing}", "ok": False})
    for part, run in parts.items():
        left = args.budget_s - (time.monotonic() - start)
        if left <= 0:
            rows.append({"check": part, "result": f"not run: over the {args.budget_s:.0f} s budget", "ok": False})
            continue
        began = time.monotonic()
        try:
            rows += run(left)
        except (Exception, SystemExit) as error:  # one broken part must not hide the others' results
            traceback.print_exc()
            rows.append({"check": part, "result": f"error: {type(error).__name__}: {error}", "ok": False})
        seconds[part] = time.monotonic() - began
    report = render(info, rows, seconds)
    print("\n" + report)
    (out / "gpu_check.md").write_text(report)
    (out / "gpu_check.json").write_text(json.dumps({"versions": info, "rows": rows, "seconds": seconds}, indent=2))
    print(f"written: {out / 'gpu_check.md'}, {out / 'gpu_check.json'}")
    return 0 if all(row["ok"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
