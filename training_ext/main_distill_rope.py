"""Stage 1 entry point: distil a 77-token CLIP text tower into a 248-token RoPE student.

    python -m training_ext.main_distill_rope --model ViT-L-14-rope-248 \\
        --teacher-model ViT-L-14 --teacher-pretrained openai --train-data train.csv ...
    # TULIP's command line, as written (--model is then the base; the student is built from it):
    python -m training_ext.main_distill_rope --model ViT-L-14 --pretrained openai --context-length 77 \\
        --student-context-length 248 --loss-type cosine --train-data train.csv ...
    torchrun --nproc_per_node 8 -m training_ext.main_distill_rope -- <same flags>
    # with embeddings precomputed by scripts/precompute_teacher_embeddings.py the teacher does not run:
    python -m training_ext.main_distill_rope ... --teacher-cache cache/vitl14 [--teacher-model ... to check it]

Run with --help for this stage's flags, TULIP's spellings and all open_clip_train flags. Flags are parsed and
checked before torch is imported.
"""
import sys

from training_ext.stages.entry_points import StageEntryPoint
from training_ext.stages.flags import DistillFlags

ENTRY = StageEntryPoint(DistillFlags("rope"))
FLAGS = ENTRY.flags
parse_args, run, main = ENTRY.parse_args, ENTRY.run, ENTRY.main

if __name__ == "__main__":
    main(sys.argv[1:])
