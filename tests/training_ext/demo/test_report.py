"""The demo's bookkeeping without training anything: step reuse, the pinned environment, the command line, the
claim check, and the table built from eval's results.json (short names, no empty column, mean ± spread)."""
import io
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


def test_pinned_environment_fixes_threads_and_hash_seed(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    env = pipeline.pinned_environment(3)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "3" and env["PYTHONHASHSEED"] == "0"
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"
    if pipeline._cpu_has_avx2():
        assert env["MKL_CBWR"].startswith("AVX2") and env["ATEN_CPU_CAPABILITY"] == "avx2"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the user's choice: it changes the pace, not the numbers
    assert pipeline.pinned_environment(3)["OMP_WAIT_POLICY"] == "ACTIVE"


class _FakePopen:
    """subprocess.Popen stand-in: 'runs' a step by writing a line of output and (exit 0) its product; ``log_lines``
    are written to the run's out.log one per second the runner waits; counts the runs."""

    def __init__(self, product, returncode=0, log_lines=()):
        self.product, self.returncode, self.log_lines = product, returncode, list(log_lines)
        self.calls, self.envs = 0, []

    def __call__(self, command, env=None, stdout=None, stderr=None):
        self.calls += 1
        self.envs.append(env)
        stderr.write(f"traceback of run {self.calls}\n".encode())
        stdout.write(f"table of run {self.calls}\n".encode())
        self.pending = list(self.log_lines)
        return self

    def wait(self, timeout=None):
        if self.pending:
            with open(self.product.parents[1] / "out.log", "a") as handle:
                handle.write(self.pending.pop(0))
            raise subprocess.TimeoutExpired("step", timeout)
        if self.returncode == 0:
            self.product.parent.mkdir(parents=True, exist_ok=True)
            self.product.write_text(f"run {self.calls}")
        return self.returncode

    def poll(self):
        return None if self.pending else self.returncode


def test_a_step_is_reused_only_when_finished_with_the_same_command(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "logs" / "teacher"
    product = folder / "checkpoints" / "epoch_1.pt"
    fake = _FakePopen(product)
    monkeypatch.setattr(pipeline.subprocess, "Popen", fake)
    runner = pipeline.Runner(pipeline.DemoPlan(out=tmp_path, threads=2))

    runner.step(0, "teacher", ["training_ext.main", "--epochs", "1"], folder, product)
    assert fake.calls == 1 and fake.envs[0]["OMP_NUM_THREADS"] == "2"
    assert json.loads((folder / pipeline.STEP_RECORD).read_text())["argv"] == ["training_ext.main", "--epochs", "1"]
    # the step's own output is in its folder, not on the terminal
    assert (folder / pipeline.CONSOLE).read_text() == "traceback of run 1\ntable of run 1\n"
    assert "of run 1" not in capsys.readouterr().out
    runner.step(0, "teacher", ["training_ext.main", "--epochs", "1"], folder, product)
    assert fake.calls == 1 and "[teacher] reusing" in capsys.readouterr().out

    stray = folder / "stray.txt"
    stray.write_text("from the run before")
    runner.step(0, "teacher", ["training_ext.main", "--epochs", "2"], folder, product)
    assert fake.calls == 2 and not stray.exists()  # another command: the old folder is gone, the step re-ran
    assert "its command changed" in capsys.readouterr().out

    (folder / pipeline.STEP_RECORD).unlink()  # as if killed before it finished
    runner.step(0, "teacher", ["training_ext.main", "--epochs", "2"], folder, product, stdout_file="eval.txt")
    assert fake.calls == 3 and "it did not finish" in capsys.readouterr().out
    assert (folder / "eval.txt").read_text() == "table of run 3\n"
    assert (folder / pipeline.CONSOLE).read_text() == "traceback of run 3\n"
    assert [t.reused for t in runner.times] == [False, True, False, False]


def test_a_failed_step_stops_the_demo_naming_it_with_the_end_of_its_output(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline.subprocess, "Popen", _FakePopen(tmp_path / "run" / "epoch_1.pt", returncode=3))
    runner = pipeline.Runner(pipeline.DemoPlan(out=tmp_path))
    with pytest.raises(SystemExit, match="step 'stage 1 rope' failed \\(exit 3\\)") as stop:
        runner.step(0, "stage 1 rope", ["x"], tmp_path / "run", tmp_path / "run" / "epoch_1.pt")
    assert str(stop.value).endswith(f"(all of it in {tmp_path / 'run' / pipeline.CONSOLE}):\n"
                                    "  traceback of run 1\n  table of run 1")
    assert not (tmp_path / "run" / pipeline.STEP_RECORD).exists()


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_training_step_shows_its_progress_on_one_line_and_what_is_left(tmp_path, monkeypatch, capsys):
    plan = pipeline.DemoPlan(out=tmp_path, n_train=128, batch_size=64, teacher_epochs=2)  # 2 steps per epoch
    folder, product = plan.logs(0) / "teacher", plan.checkpoint(0, "teacher", 2)
    lines = [f"x | INFO | Train Epoch: {epoch} [{samples}/128 (50%)] Batch (t): 0.2\n"
             for epoch in range(2) for samples in (64, 128)]
    monkeypatch.setattr(pipeline.subprocess, "Popen", _FakePopen(product, log_lines=lines))
    terminal = _Terminal()
    runner = pipeline.Runner(plan, status=pipeline.StatusLine(terminal))
    runner.left.pop((0, "data"))
    runner.slowdown = 1e6  # as if the data step had run a million times slower than on the README's machine
    runner.step(0, "teacher", ["training_ext.main"], folder, product, train_epochs=2)

    written = terminal.getvalue()
    assert written.endswith("\r\x1b[K")  # cleared before the done line
    shown = [part[:-len("\x1b[K")] for part in written.split("\r")[1:-1]]
    assert [line.split(", ")[:2] for line in shown] == [
        ["  teacher: epoch 1/2", "step 1/2"], ["  teacher: epoch 1/2", "step 2/2"],
        ["  teacher: epoch 2/2", "step 1/2"], ["  teacher: epoch 2/2", "step 2/2"]]
    # before the log gives a pace, what is left comes from the slowdown measured so far: hours; then from the
    # step's own pace (these 'steps' take no time)
    assert shown[0].endswith(" h left")
    assert " s/step" not in shown[0] and all(" s/step, ~0 s left | demo ~" in line for line in shown[1:])
    out = capsys.readouterr().out
    assert f"[teacher] done in 0s (0 CPU-s); output in {folder / 'out.log'}" in out


def test_threads_default_to_the_readme_count_and_auto_follows_the_load():
    parse = pipeline.build_parser().parse_args
    assert parse([]).threads == pipeline.THREADS == 2 and parse(["--threads", "auto"]).threads == "auto"
    assert parse(["--threads", "3"]).threads == 3
    for wrong in ("0", "two"):
        with pytest.raises(SystemExit):
            parse(["--threads", wrong])
    threads, why = pipeline.resolve_threads(2, 2, 0.1)
    assert threads == 2 and why == "threads: 2 per step (2 CPUs, load average 0.1)"
    threads, why = pipeline.resolve_threads(2, 2, 5.9)
    assert threads == 2 and "other jobs are running" in why and "--threads auto would use 1" in why
    threads, why = pipeline.resolve_threads("auto", 16, 3.2)
    assert threads == 13 and why.startswith("threads: 13 per step (--threads auto: 16 CPUs, load average 3.2)")


def test_planned_steps_follow_the_plan_and_the_readme_timing():
    default = pipeline.planned_steps(pipeline.DemoPlan(out="x"))
    assert [(s.name, s.train_steps) for s in default] == [
        ("data", 0), ("teacher", 4 * 128), ("stage 1 rope", 128), ("stage 2 tulip-rope", 256),
        ("stage 2 rope-stage2-only", 256), ("eval ordinary", 0), ("eval detail", 0)]
    # the README's "Time" table for `make demo` on its idle 2-core machine: 644 s, each step within 10 %
    readme = {"data": 36, "teacher": 204, "stage 1 rope": 66, "stage 2 tulip-rope": 146,
              "stage 2 rope-stage2-only": 141, "eval ordinary": 25, "eval detail": 28}
    for step in default:
        assert step.idle_seconds == pytest.approx(readme[step.name], rel=0.1), step.name
    assert sum(s.idle_seconds for s in default) == pytest.approx(644, rel=0.03)
    full = pipeline.planned_steps(pipeline.DemoPlan(out="x", variants=tuple(pipeline.VARIANTS), seeds=(0, 1),
                                                    long_caption_subset=2048))
    assert [s.seed for s in full] == [0] * 12 + [1] * 12
    steps = {s.name: s.train_steps for s in full[:12]}
    assert steps["teacher"] == 4 * 128  # the teacher trains on every pair, stages 1 and 2 on the subset
    assert steps["stage 1 cope"] == 32 and steps["stage 2 longclip"] == 2 * 32
    assert steps["stage 2 rope-stage2-matched"] == 3 * 32  # stage 2's epochs + stage 1's


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
