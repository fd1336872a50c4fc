"""Stage 2 entry point: fine-tune the whole CLIP (distilled student text tower + vision tower) on long captions.

    python -m training_ext.main_context_finetune_rope --model ViT-L-14-rope-248 --pretrained openai \\
        --student-checkpoint logs/<stage1>/checkpoints/epoch_30.pt --short-caption-weight 0.2 \\
        --train-data train.csv ...
    # TULIP's command line, as written (--model is the base, --student-model the stage-1 checkpoint):
    python -m training_ext.main_context_finetune_rope --model ViT-L-14 --pretrained openai --context-length 77 \\
        --student-context-length 248 --loss-type clip_loss --student-model <stage-1 checkpoint> ...
    torchrun --nproc_per_node 8 -m training_ext.main_context_finetune_rope -- <same flags>
    # Long-CLIP's way (no stage 1): stretched positions, PCM short-caption loss, label smoothing
    python -m training_ext.main_context_finetune_rope --model ViT-L-14-longclip-248 --pretrained openai \\
        --short-caption-loss pcm --short-caption-weight 1 --label-smoothing 0.1 --train-data train.csv ...

Run with --help for this stage's flags, TULIP's spellings and all open_clip_train flags. Flags are parsed and
checked before torch is imported.
"""
import sys

from training_ext.stages.entry_points import StageEntryPoint
from training_ext.stages.flags import FinetuneFlags

ENTRY = StageEntryPoint(FinetuneFlags("rope"))
FLAGS = ENTRY.flags
parse_args, run, main = ENTRY.parse_args, ENTRY.run, ENTRY.main

if __name__ == "__main__":
    main(sys.argv[1:])
