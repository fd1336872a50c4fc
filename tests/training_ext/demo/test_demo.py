"""A reduced run of the README's demo: every stage hands over to the next, and the 248-token student reads
late details that the 77-token teacher cannot."""
import pytest
import json

from training_ext.demo.pipeline import DIRECTIONS, LATE, DemoPlan, recall, run_demo

# starts subprocesses or runs a pipeline end to end
pytestmark = pytest.mark.slow


def test_reduced_demo_pipeline(tmp_path, capsys):
    plan = DemoPlan(out=tmp_path / "demo", n_train=2048, n_test=64, teacher_epochs=3, distill_epochs=1,
                    finetune_epochs=2)
    outcome = run_demo(plan)

    teacher = plan.checkpoint("teacher", 3)
    stage1 = plan.checkpoint("stage1-rope", 1)
    stage2 = plan.checkpoint("stage2-rope", 2)
    for checkpoint in (teacher, stage1, stage2):
        assert checkpoint.is_file()
    results = outcome["results"]
    evaluated = {(row["model"], row["benchmark"]) for row in results["results"]}
    for spec in (f"tiny-clip:{teacher}", f"tiny-clip-rope-248:{stage1}", f"tiny-clip-rope-248:{stage2}"):
        assert {(spec, "ordinary"), (spec, LATE)} <= evaluated
    assert (plan.out / "eval-rope" / "recall_by_length.png").stat().st_size > 0

    for direction in DIRECTIONS:
        assert recall(results, outcome["student"], LATE)[direction] > recall(results, outcome["teacher"], LATE)[direction]

    # A second run reuses every trained stage (only the evaluation runs again).
    stamps = [p.stat().st_mtime_ns for p in (teacher, stage1, stage2)]
    capsys.readouterr()
    run_demo(plan)
    assert [p.stat().st_mtime_ns for p in (teacher, stage1, stage2)] == stamps
    out = capsys.readouterr().out
    assert "[teacher] reusing" in out and "[stage 1] reusing" in out and "[stage 2] reusing" in out
    assert json.loads((plan.data_dir / "meta.json").read_text())["splits"]["train"]["n"] == 2048
