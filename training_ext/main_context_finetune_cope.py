"""Stage 2 entry point for a CoPE student (TULIP's main_context_finetune_cope): the same stage as
main_context_finetune_rope; in TULIP's form (``--model <base> --student-model <checkpoint>``) the model is
``<base>-cope-<--student-context-length>``.

Run with --help for every flag.
"""
import sys

from training_ext.stages.entry_points import StageEntryPoint
from training_ext.stages.flags import FinetuneFlags

ENTRY = StageEntryPoint(FinetuneFlags("cope"))
FLAGS = ENTRY.flags
parse_args, run, main = ENTRY.parse_args, ENTRY.run, ENTRY.main

if __name__ == "__main__":
    main(sys.argv[1:])
