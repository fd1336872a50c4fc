"""scripts/gpu_check.py (`make gpu-check`) without a GPU: the one-line exit, the table and its met/MISSED marks on
given numbers, and the pass/fail rows read from a real pytest JUnit report. The GPU parts run on a GPU only."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from support.data_prep_fixtures import load_script

ROOT = Path(__file__).resolve().parents[2]


def _gpu_check():
    return load_script("gpu_check")


@pytest.mark.slow  # make, then a fresh interpreter importing torch
def test_make_gpu_check_without_a_gpu_says_so_in_one_line_and_exits_0(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")  # no GPU even where the test machine has one
    done = subprocess.run(["make", "-s", "gpu-check", f"PY={sys.executable}", f"GPU_CHECK_ARGS=--out {out}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [done.stdout.strip()] and done.stdout.startswith("gpu-check: no CUDA GPU")
    assert not out.exists()


def _row(step_s, encode, peak, tflops, saved=None):
    return {"step_s": step_s, "encode_captions_per_s": encode, "peak_bytes": peak, "tflops": tflops,
            "saved_bytes": saved}


def test_table_gives_ratios_to_stock_and_marks_each_target():
    gpu_check = _gpu_check()
    results = {"stock": _row(0.100, 1000.0, 2000, 50.0, saved=100),
               "rope": _row(0.050, 1500.0, 1800, 80.0),           # step 0.50x met, encode 1.50x MISSED (>= 1.8)
               "cope-torch": _row(0.130, 700.0, 2500, 40.0, 120),  # every CoPE target met
               "cope-triton": _row(0.150, 600.0, 2700, 35.0),      # step 1.50x > 1.4, encode 0.60x < 0.67, peak 1.35x
               "rope+c": _row(0.040, 2000.0, None, 100.0)}         # no peak measured: that target is not judged
    rows = {row["check"]: row for row in gpu_check.bench_rows("ViT-B-16", results)}
    assert list(rows) == ["ViT-B-16 rope", "ViT-B-16 cope-torch", "ViT-B-16 cope-triton", "ViT-B-16 rope+c"]
    assert rows["ViT-B-16 rope"]["ratios"] == pytest.approx({"step": 0.5, "encode": 1.5, "peak": 0.9,
                                                             "TFLOP/s": 1.6})
    assert rows["ViT-B-16 rope"]["result"] == "MISSED"
    assert "step_s 0.50x <= 0.55x: met" in rows["ViT-B-16 rope"]["targets"]
    assert "encode_captions_per_s 1.50x >= 1.80x: MISSED" in rows["ViT-B-16 rope"]["targets"]
    assert rows["ViT-B-16 cope-torch"]["result"] == "met" and "saved_bytes 1.20x <= 1.50x: met" in \
        rows["ViT-B-16 cope-torch"]["targets"]
    triton = rows["ViT-B-16 cope-triton"]["targets"]
    assert rows["ViT-B-16 cope-triton"]["result"] == "MISSED" and triton.count("MISSED") == 3
    assert rows["ViT-B-16 rope+c"]["ratios"]["peak"] is None and "peak" not in rows["ViT-B-16 rope+c"]["targets"]
    assert all(row["ok"] for row in rows.values())  # a MISSED target is a measurement, not a failed check

    free = gpu_check.padding_free_rows({"model": "m", "precision": "amp_bf16", "mixes": {
        "coco-like": {"ratio": 5.2, "target": ">= 3.00x", "met": True, "padded_captions_per_s": 1000.0,
                      "padding_free_captions_per_s": 5200.0, "max_abs_diff": 0.004},
        "sharegpt4v-like": {"ratio": 1.25, "target": ">= 1.30x", "met": False, "padded_captions_per_s": 800.0,
                            "padding_free_captions_per_s": 1000.0, "max_abs_diff": 0.003}}})
    assert [(row["check"], row["result"], row["ok"]) for row in free] == [
        ("padding-free eval coco-like (m, amp_bf16)", "met", True),
        ("padding-free eval sharegpt4v-like (m, amp_bf16)", "MISSED", True)]
    report = gpu_check.render({"torch": "x", "gpu": "y"}, list(rows.values()) + free, {"GPU tests": 12.3})
    lines = report.splitlines()
    assert "torch: x | gpu: y" in lines
    header = lines.index("| check | result | step /stock | encode /stock | peak /stock | TFLOP/s /stock | targets |")
    assert lines[header + 2].startswith("| ViT-B-16 rope | MISSED | 0.50x | 1.50x | 0.90x | 1.60x | ")
    assert ("| padding-free eval sharegpt4v-like (m, amp_bf16) | MISSED |  |  |  |  | "
            "captions/s 1.25x >= 1.30x: MISSED (padded 800, padding-free 1000; max |diff| 3.0e-03) |") in report
    assert "seconds per part: GPU tests 12" in report


def test_padding_free_part_runs_bench_eval_with_its_flags_overridden_for_cpu():
    """The CPU plumbing of the GPU check's padding-free part: bench_eval's padding-free mode, imported, as rows."""
    rows = _gpu_check()._padding_free_eval("--device", "cpu", "--precision", "fp32", "--model", "tiny-clip-rope-248",
                                           "--text-batch-size", "4", "--captions", "4", "--workers", "0",
                                           "--repeats", "1")
    assert [row["check"] for row in rows] == ["padding-free eval coco-like (tiny-clip-rope-248, fp32)",
                                             "padding-free eval sharegpt4v-like (tiny-clip-rope-248, fp32)"]
    assert all(row["ok"] and row["result"] in ("met", "MISSED") and row["targets"].startswith("captions/s ")
               for row in rows)


@pytest.mark.slow  # a pytest subprocess
def test_junit_rows_read_pass_fail_and_skip_from_pytest(tmp_path):
    (tmp_path / "test_sample.py").write_text(textwrap.dedent("""
        import pytest
        def test_good(): pass
        def test_bad(): assert 1 == 2, "one is not two"
        @pytest.mark.skip(reason="needs a CUDA GPU")
        def test_later(): pass
    """))
    junit = tmp_path / "report.xml"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
                           "test_sample.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    rows = _gpu_check().junit_rows(junit, done.returncode)
    assert [(row["check"], row["result"].split(":")[0], row["ok"]) for row in rows] == [
        ("test_sample::test_good", "pass", True), ("test_sample::test_bad", "fail", False),
        ("test_sample::test_later", "skipped", True)]
    assert "one is not two" in rows[1]["result"] and "needs a CUDA GPU" in rows[2]["result"]
    assert _gpu_check().junit_rows(tmp_path / "missing.xml", 4) == [
        {"check": "GPU tests", "result": "fail: pytest exited 4", "ok": False}]
