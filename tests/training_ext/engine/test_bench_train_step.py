"""scripts/bench_train_step.py builds each stage's arguments through the stages' current parser (the full speed
run is too slow for the suite: it is run by hand, see its docstring)."""
from types import SimpleNamespace

import pytest

from support.data_prep_fixtures import load_script
from support.training_helpers import STUDENT, TEACHER, write_csv


@pytest.mark.parametrize("stage", ["distill", "finetune"])
def test_training_args_parse_with_the_stage_flags(tmp_path, stage):
    bench = load_script("bench_train_step")
    csv = write_csv(str(tmp_path), rows=4)
    opts = SimpleNamespace(student=STUDENT, teacher=TEACHER, batch_size=2, workers=0, precision="fp32",
                           device="cpu")
    args = bench.training_args(stage, csv, opts)
    assert (args.stage, args.model, args.train_data, args.batch_size) == (stage, STUDENT, csv, 2)
    assert (args.world_size, args.distributed) == (1, False)
    if stage == "distill":
        assert args.teacher_model == TEACHER
