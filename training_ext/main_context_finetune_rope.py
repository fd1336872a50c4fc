"""Stage 2 entry point: fine-tune the whole CLIP (distilled student text tower + vision tower) on long captions.

    python -m training_ext.main_context_finetune_rope --model ViT-L-14-rope-248 --pretrained openai \\
        --student-checkpoint logs/<stage1>/checkpoints/epoch_30.pt --short-caption-weight 0.2 \\
        --train-data train.csv ...
    torchrun --nproc_per_node 8 -m training_ext.main_context_finetune_rope -- <same flags>
    # Long-CLIP's way (no stage 1): stretched positions, PCM short-caption loss, label smoothing
    python -m training_ext.main_context_finetune_rope --model ViT-L-14-longclip-248 --pretrained openai \
        --short-caption-loss pcm --short-caption-weight 1 --label-smoothing 0.1 --train-data train.csv ...

Run with --help for TULIP's flags followed by all open_clip_train flags.
"""
import sys
from typing import Optional, Sequence

from training_ext.engine import params
from training_ext.engine.loop import TrainState
from training_ext.engine.trainer import command_line, run_stage
from training_ext.stages.finetune_stage import FinetuneStage

STAGE = FinetuneStage()


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
