"""The demo's bookkeeping without training anything: step reuse, the pinned environment, the command line, the
claim check, and the table built from eval's results.json (short names, no empty column, mean ± spread)."""
import json
import subprocess

import pytest

from training_ext.demo import pipeline, report
from training_ext.demo.report import DIRECTIONS, EARLY, LATE, ORDINARY


def _eval_results(spec_values, bucketed):
    """A results.json as eval writes it, for models {spec: (R@1 ordinary, [R@1 per detail bucket])}."""
    rows = []
    for spec, (ordinary, per_bucket) in spec_values.items():
        row = {"model": spec, "context_length": 77 if spec.startswith("tiny-clip:") else 248,
               "metrics": {d: (per_bucket[0] if bucketed else ordinary) for d in DIRECTIONS}}
        if bucketed:
            labels = report.column_bucket_labels()
            row["recall_by_column"] = {"buckets": [
                {"bucket": label, "num_images": 8 * (i + 1), "num_captions": 8 * (i + 1),
                 **{d: value for d in DIRECTIONS}} for i, (label, value) in enumerate(zip(labels, per_bucket))]}
        rows.append(row)
    return {"results": rows}


def _metrics(teacher_late, student_late, student_ordinary=90.0):
    n = len(report.DETAIL_EDGES) + 1
    specs = {"tiny-clip:/x/teacher/epoch_4.pt": (90.0, [80.0] + [teacher_late] * (n - 1)),
             "tiny-clip-rope-248:/x/stage2/epoch_2.pt": (student_ordinary, [80.0] + [student_late] * (n - 1))}
    models = dict(zip([pipeline.TEACHER_LABEL, "TULIP RoPE (stage 1 + 2)"], specs))
    results = {ORDINARY: _eval_results(specs, False), report.DETAIL: _eval_results(specs, True)}
    return report.metrics_by_model(results, models), models


def test_late_detail_pools_the_buckets_past_token_75_by_their_item_counts():
    n = len(report.DETAIL_EDGES) + 1
    per_bucket = [10.0 * i for i in range(n)]
    specs = {"tiny-clip:/t.pt": (50.0, per_bucket)}
    results = {ORDINARY: _eval_results(specs, False), report.DETAIL: _eval_results(specs, True)}
    metrics = report.metrics_by_model(results, {"teacher": "tiny-clip:/t.pt"})["teacher"]
    weights = range(2, n + 1)  # bucket i holds 8 * (i + 1) items
    expected = sum(w * 10.0 * (w - 1) for w in weights) / sum(weights)
    for direction in DIRECTIONS:
        assert metrics[EARLY][direction] == 0.0
        assert metrics[LATE][direction] == pytest.approx(expected)
        assert metrics[ORDINARY][direction] == 50.0


def test_table_has_short_names_and_no_empty_column():
    metrics, models = _metrics(0.0, 60.0)
    labels = list(models)
    one_seed = report.table(report.summarise([{"seed": 0, "metrics": metrics}], labels), labels, 1)
    lines = [line for line in one_seed.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == ["model", "ctx", "ordinary I2T", "ordinary T2I", f"{EARLY} I2T", f"{EARLY} T2I",
                      f"{LATE} I2T", f"{LATE} T2I"]
    body = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    assert [row[0] for row in body] == labels and all(".pt" not in line for line in lines)
    assert all(cell for row in body for cell in row)
    assert [row[1] for row in body] == ["77", "248"] and body[1][6:] == ["60.00", "60.00"]

    other, _ = _metrics(0.0, 50.0)
    two_seeds = report.table(report.summarise([{"seed": 0, "metrics": metrics}, {"seed": 1, "metrics": other}],
                                              labels), labels, 2)
    assert "| 55.0 ± 5.0" in two_seeds and "mean ± half the range over 2 seeds" in two_seeds


def test_detail_plot_is_written(tmp_path):
    metrics, models = _metrics(0.0, 60.0)
    runs = [{"seed": 0, "metrics": metrics}, {"seed": 1, "metrics": metrics}]
    path = report.plot_detail_position(runs, list(models), tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 10_000 and path.endswith("plot.png")


def test_verdict_asks_for_twice_the_teacher_past_token_75_and_no_ordinary_loss():
    assert pipeline.verdict(_metrics(12.5, 40.0)[0], "TULIP RoPE (stage 1 + 2)") == []
    failures = pipeline.verdict(_metrics(12.5, 20.0)[0], "TULIP RoPE (stage 1 + 2)")
    assert len(failures) == 2 and all("not at least twice" in f for f in failures)
    assert len(pipeline.verdict(_metrics(0.0, 0.0)[0], "TULIP RoPE (stage 1 + 2)")) == 2  # 0 is never a win
    ordinary_loss = pipeline.verdict(_metrics(12.5, 40.0, student_ordinary=80.0)[0], "TULIP RoPE (stage 1 + 2)")
    assert len(ordinary_loss) == 2 and all("points below" in f for f in ordinary_loss)


def test_pinned_environment_fixes_threads_and_hash_seed():
    env = pipeline.pinned_environment(3)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "3" and env["PYTHONHASHSEED"] == "0"
    if pipeline._cpu_has_avx2():
        assert env["MKL_CBWR"].startswith("AVX2") and env["ATEN_CPU_CAPABILITY"] == "avx2"


class _FakeRun:
    """subprocess.run stand-in: 'runs' a step by writing its product, and counts the runs."""

    def __init__(self, product):
        self.product, self.calls, self.envs = product, 0, []

    def __call__(self, command, env=None, stdout=None):
        self.calls += 1
        self.envs.append(env)
        self.product.parent.mkdir(parents=True, exist_ok=True)
        self.product.write_text(f"run {self.calls}")
        return subprocess.CompletedProcess(command, 0)


def test_a_step_is_reused_only_when_finished_with_the_same_command(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "logs" / "teacher"
    product = folder / "checkpoints" / "epoch_1.pt"
    fake = _FakeRun(product)
    monkeypatch.setattr(pipeline.subprocess, "run", fake)
    runner = pipeline.Runner(pipeline.DemoPlan(out=tmp_path, threads=2))

    runner.step(0, "teacher", ["training_ext.main", "--epochs", "1"], folder, product)
    assert fake.calls == 1 and fake.envs[0]["OMP_NUM_THREADS"] == "2"
    assert json.loads((folder / pipeline.STEP_RECORD).read_text())["argv"] == ["training_ext.main", "--epochs", "1"]
    runner.step(0, "teacher", ["training_ext.main", "--epochs", "1"], folder, product)
    assert fake.calls == 1 and "[teacher] reusing" in capsys.readouterr().out

    stray = folder / "stray.txt"
    stray.write_text("from the run before")
    runner.step(0, "teacher", ["training_ext.main", "--epochs", "2"], folder, product)
    assert fake.calls == 2 and not stray.exists()  # another command: the old folder is gone, the step re-ran
    assert "its command changed" in capsys.readouterr().out

    (folder / pipeline.STEP_RECORD).unlink()  # as if killed before it finished
    runner.step(0, "teacher", ["training_ext.main", "--epochs", "2"], folder, product)
    assert fake.calls == 3 and "it did not finish" in capsys.readouterr().out
    assert [t.reused for t in runner.times] == [False, True, False, False]


def test_a_failed_step_stops_the_demo_naming_it(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline.subprocess, "run",
                        lambda command, env=None, stdout=None: subprocess.CompletedProcess(command, 3))
    runner = pipeline.Runner(pipeline.DemoPlan(out=tmp_path))
    with pytest.raises(SystemExit, match="step 'stage 1 rope' failed \\(exit 3\\)"):
        runner.step(0, "stage 1 rope", ["x"], tmp_path / "run", tmp_path / "run" / "epoch_1.pt")
    assert not (tmp_path / "run" / pipeline.STEP_RECORD).exists()


def test_command_line_variants_and_seeds():
    parse = pipeline.build_parser().parse_args
    assert parse([]).variants == pipeline.DEFAULT_VARIANTS and parse([]).seeds == (0,)
    args = parse(["--compare", "all", "--seeds", "0,1"])
    assert args.variants == tuple(pipeline.VARIANTS) and args.seeds == (0, 1)
    assert parse(["--compare", "longclip,uniform"]).variants == ("longclip", "uniform")
    with pytest.raises(SystemExit):
        parse(["--compare", "tulip-rope,bert"])
    with pytest.raises(SystemExit):
        parse(["--seeds", "a"])
    plan = pipeline.DemoPlan(out="x", variants=("longclip", "tulip-cope", "tulip-rope", "rope-stage2-only"))
    assert plan.student_positions == ["cope", "rope"]  # one stage 1 per position, shared by its variants
