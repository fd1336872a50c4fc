"""Stage 1 entry point for a CoPE student (TULIP's main_distill_cope): the same stage as main_distill_rope; in
TULIP's form (``--model <base> --student-context-length N``) the student is ``<base>-cope-N``.

    python -m training_ext.main_distill_cope --model ViT-L-14 --pretrained openai --context-length 77 \\
        --student-context-length 248 --loss-type cosine --train-data train.csv ...

Run with --help for every flag.
"""
import sys

from training_ext.stages.entry_points import StageEntryPoint
from training_ext.stages.flags import DistillFlags

ENTRY = StageEntryPoint(DistillFlags("cope"))
FLAGS = ENTRY.flags
parse_args, run, main = ENTRY.parse_args, ENTRY.run, ENTRY.main

if __name__ == "__main__":
    main(sys.argv[1:])
