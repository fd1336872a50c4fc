"""One process of a multi-process training run in the DDP tests (launched by torchrun or with SLURM variables).

usage: python tests/support/ddp_worker.py {distill|finetune} OUT_DIR [training flags...]
Runs the stage through the same code the entry points use and saves this rank's final weights to
OUT_DIR/rank<r>.pt, so the test can compare every rank, not just the one that writes checkpoints.
"""
import os
import sys

import torch

from training_ext import main_context_finetune_rope, main_distill_rope

if __name__ == "__main__":
    torch.set_num_threads(1)
    stage, out_dir, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
    entry = main_distill_rope if stage == "distill" else main_context_finetune_rope
    args = entry.parse_args(argv)
    state = entry.run(args)
    torch.save(state.model.state_dict(), os.path.join(out_dir, f"rank{args.rank}.pt"))
