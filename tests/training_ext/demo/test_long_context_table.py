"""scripts/long_context_table.py's plumbing: the commands it runs (the demo's stage 2 at 512 on train_long.csv,
eval's flags per reading) and the table it builds from eval's results.json, without training or evaluating."""
import json
from pathlib import Path

import pytest

from support.data_prep_fixtures import load_script
from training_ext.demo.pipeline import DemoPlan, finetune, Runner, VARIANTS
from training_ext.eval.options import build_parser as eval_parser

table = load_script("long_context_table")


class _Recorder(Runner):
    """A Runner that records the commands instead of running them."""

    def step(self, seed, name, argv, folder, product, **kwargs):
        self.argvs = getattr(self, "argvs", []) + [argv]
        return product


def test_finetune_is_the_demos_stage_2_at_512_on_the_long_training_split(tmp_path):
    """Against the demo's own TULIP RoPE stage-2 command: the same flags but the run name, the training CSV and
    --force-context-length 512."""
    plan = DemoPlan(out=tmp_path)
    checkpoints = {"teacher": Path("/t.pt"), "stage1": Path("/s1.pt")}
    demo = _Recorder(plan)
    finetune(demo, 0, VARIANTS["tulip-rope"], checkpoints["teacher"], checkpoints["stage1"])
    demo_argv = demo.argvs[0]
    ours = table.finetune_argv(plan, 0, checkpoints)
    context = ours.index("--force-context-length")
    assert ours[context + 1] == "512"
    ours = ours[:context] + ours[context + 2:]
    differing = [(a, b) for a, b in zip(demo_argv, ours) if a != b]
    assert len(ours) == len(demo_argv)
    assert differing == [("stage2-tulip-rope", table.FINETUNED_RUN),
                         (str(plan.data_dir(0) / "train.csv"), str(plan.data_dir(0) / "train_long.csv"))]


def test_eval_commands_parse_and_read_at_the_asked_context(tmp_path):
    plan = DemoPlan(out=tmp_path)
    for _, reading in table.READINGS:
        argv = table.eval_argv(plan, tmp_path, ["tiny-clip-rope-248:/x.pt"], reading, tmp_path / "out")
        args = eval_parser().parse_args(argv[1:])
        assert args.context_length == (512 if reading else None)
        assert args.position_scaling == (reading[-1] if reading else None)
        assert args.bucket_by_column == "detail_position" and args.bucket_column_edges == "300,350,400,450"
        assert [c.split("=")[0] for c in args.csv] == [table.LONG, table.REFERENCE]


def _row(model, benchmark, r1, buckets=None):
    metrics = {"image_to_text_R@1": r1, "text_to_image_R@1": r1 / 2}
    row = {"model": model, "benchmark": benchmark, "context_length": 512, "metrics": metrics}
    if buckets:
        row["recall_by_column"] = {"buckets": [
            {"bucket": name, "num_images": n, "image_to_text_R@1": v, "text_to_image_R@1": v / 2}
            for name, n, v in buckets]}
    return row


def test_table_takes_each_rows_numbers_from_its_own_run_and_model():
    buckets_a = [("<=300", 40, 10.0), (">300", 216, 20.0)]
    buckets_b = [("<=300", 40, 70.0), (">300", 216, 80.0)]
    results = {"r1": {"results": [_row("a", "detail-long", 0, buckets_a), _row("a", "detail", 33.0),
                                  _row("b", "detail-long", 0, buckets_b), _row("b", "detail", 44.0)]}}
    rows = table.table_rows(results, [("A", "r1", "a"), ("B", "r1", "b")])
    assert rows[1]["by_position"] == {"<=300": {"image_to_text_R@1": 70.0, "text_to_image_R@1": 35.0},
                                      ">300": {"image_to_text_R@1": 80.0, "text_to_image_R@1": 40.0}}
    assert rows[0]["detail"] == {"image_to_text_R@1": 33.0, "text_to_image_R@1": 16.5}
    lines = table.markdown(rows).splitlines()
    assert lines[0] == "| model | detail <=300 (n=40) | detail >300 (n=216) | detail 43-237 (reference) |"
    assert lines[2] == "| A | 10.0 / 5.0 | 20.0 / 10.0 | 33.0 / 16.5 |"
    with pytest.raises(KeyError):
        table.table_rows(results, [("C", "r1", "c")])


def test_a_missing_demo_run_is_refused_naming_the_file_and_the_fix(tmp_path, capsys):
    with pytest.raises(SystemExit, match=r"teacher/checkpoints/epoch_4.pt is missing: run the default demo"):
        table.main(["--demo-out", str(tmp_path / "nothing"), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit, match="must be 1 or more"):
        table.main(["--demo-out", str(tmp_path), "--finetune-epochs", "0"])
