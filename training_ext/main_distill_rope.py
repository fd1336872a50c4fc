"""Stage 1 entry point: distil a 77-token CLIP text tower into a 248-token RoPE/CoPE student.

    python -m training_ext.main_distill_rope --model ViT-L-14-rope-248 --pretrained openai \\
        --teacher-model ViT-L-14-quickgelu --teacher-pretrained openai --train-data train.csv ...
    torchrun --nproc_per_node 8 -m training_ext.main_distill_rope -- <same flags>
    # with embeddings precomputed by scripts/precompute_teacher_embeddings.py the teacher does not run:
    python -m training_ext.main_distill_rope ... --teacher-cache cache/vitl14 [--teacher-model ... to check it]

Run with --help for TULIP's flags followed by all open_clip_train flags.
"""
import sys
from typing import Optional, Sequence

from training_ext.engine import params
from training_ext.engine.loop import TrainState
from training_ext.engine.trainer import command_line, run_stage
from training_ext.stages.distill_stage import DistillStage

STAGE = DistillStage()


def parse_args(argv: Optional[Sequence[str]] = None):
    """This stage's flags (its own, then open_clip_train's) as one namespace; exits on a user mistake."""
    return params.parse_args(argv, STAGE)


def run(args) -> TrainState:
    """Train as the parsed flags say; returns the final state (model, optimizer, epoch, step, last checkpoint)."""
    return run_stage(args, STAGE)


def main(argv=None) -> None:
    command_line(argv, STAGE)


if __name__ == "__main__":
    main(sys.argv[1:])
