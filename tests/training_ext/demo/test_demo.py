"""A reduced run of the README's demo: every stage hands over to the next, the 248-token student reads details
past token 75 that the 77-token teacher cannot, and the printed table is the README's shape."""
import json

import pytest

from training_ext.demo.pipeline import TEACHER_LABEL, VARIANTS, DemoPlan, planned_steps, run_demo, stage1_label
from training_ext.demo.report import DIRECTIONS, LATE

# starts subprocesses and runs the pipeline end to end
pytestmark = pytest.mark.slow

STUDENT = VARIANTS["tulip-rope"].label


def test_reduced_demo_pipeline(tmp_path, capsys):
    # sized to run in about 3 minutes on 2 cores: the student still beats the teacher past token 75 by a wide
    # margin (about 60 against 0-10 % R@1 at twice these sizes)
    plan = DemoPlan(out=tmp_path / "demo", variants=("tulip-rope",), n_train=1024, n_test=64, n_val=64,
                    teacher_epochs=2, distill_epochs=1, finetune_epochs=2)
    outcome = run_demo(plan)

    checkpoints = [plan.checkpoint(0, "teacher", 2), plan.checkpoint(0, "stage1-rope", 1),
                   plan.checkpoint(0, "stage2-tulip-rope", 2)]
    assert all(c.is_file() for c in checkpoints)
    run = outcome["per_seed"][0]
    assert list(run["models"]) == [TEACHER_LABEL, stage1_label("rope"), STUDENT]
    assert [spec.split(":", 1)[1] for spec in run["models"].values()] == [str(c) for c in checkpoints]
    assert (plan.out / "recall_by_detail_position.png").stat().st_size > 0
    assert (plan.seed_dir(0) / "eval-ordinary" / "recall_by_length.png").stat().st_size > 0

    # the steps the progress estimate planned for are the steps that ran
    assert [(t["seed"], t["step"]) for t in outcome["timings"]] == [(s.seed, s.name) for s in planned_steps(plan)]

    # a run's output is in its folder; a stage's flags are in its log file, not in what it printed
    stage1 = plan.logs(0) / "stage1-rope"
    assert "  lr: 0.001" in (stage1 / "out.log").read_text()
    assert "  lr: 0.001" not in (stage1 / "console.txt").read_text()
    assert "flags: all " in (stage1 / "console.txt").read_text()

    # the table the demo prints: a row per model under its short name, every cell filled
    out = capsys.readouterr().out
    table = [line for line in out[out.index("=== result ==="):].splitlines() if line.startswith("| ")]
    assert [line.split("|")[1].strip() for line in table[1:]] == list(run["models"])
    assert all(cell.strip() for line in table for cell in line.strip().strip("|").split("|"))
    assert ".pt" not in "".join(table)

    teacher, student = run["metrics"][TEACHER_LABEL][LATE], run["metrics"][STUDENT][LATE]
    for direction in DIRECTIONS:
        assert student[direction] > teacher[direction], direction

    # A second run reuses every step and reports the same numbers.
    stamps = [c.stat().st_mtime_ns for c in checkpoints]
    again = run_demo(plan)
    assert [c.stat().st_mtime_ns for c in checkpoints] == stamps
    out = capsys.readouterr().out
    for step in ("data", "teacher", "stage 1 rope", "stage 2 tulip-rope", "eval ordinary", "eval detail"):
        assert f"[{step}] reusing" in out
    assert again["summary"] == outcome["summary"]
    assert json.loads((plan.out / "comparison.json").read_text())["plan"]["n_train"] == 1024
