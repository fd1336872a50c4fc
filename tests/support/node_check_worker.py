"""One rank of the once-per-node image check test: builds the stage-2 CSV dataset under a gloo process group and
writes what it saw to OUT_DIR/rank<r>.json.

usage: python tests/support/node_check_worker.py OUT_DIR CSV [--skip-missing]
(launched with torchrun, or with SLURM_PROCID / SLURM_LOCALID / SLURM_NTASKS to place ranks on "nodes")
"""
import json
import os
import sys

import torch.distributed as dist
from open_clip_train.distributed import world_info_from_env

from training_ext.data import csv_datasets

if __name__ == "__main__":
    out_dir, csv_path, skip_missing = sys.argv[1], sys.argv[2], "--skip-missing" in sys.argv[3:]
    local_rank, rank, world_size = world_info_from_env()
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    checked = []
    counted = csv_datasets.existing_files

    def counting(column, rows, base):
        checked.append(len(rows))
        return counted(column, rows, base)

    csv_datasets.existing_files = counting
    try:
        dataset = csv_datasets.CsvImageTextDataset(csv_path, "filepath", "title", None, None,
                                                   skip_missing=skip_missing)
        result = {"checked": sum(checked), "rows": [int(r) for r in dataset.row_numbers],
                  "skipped": dataset.skips.counts()}
    except FileNotFoundError as error:
        result = {"checked": sum(checked), "error": str(error)}
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w", encoding="utf-8") as handle:
        json.dump(result, handle)
    dist.destroy_process_group()
