"""Work done once per node and shared with the node's other ranks (e.g. checking that 1.2M image files exist: 8 ranks
each stat-ing every file costs 8x the metadata traffic of one).

The node's local rank 0 computes a numpy array and writes it to a file in the node's temporary folder; the other
ranks of the node wait at a barrier of the whole job and read it. Each call's file name carries a token drawn by
global rank 0 and broadcast to every rank, so a file of another run or call is never read. Without an initialised
torch.distributed process group (one process), the array is computed directly.
"""
import contextlib
import os
import tempfile
import uuid
from typing import Callable

import numpy as np
import torch.distributed as dist
from open_clip_train.distributed import world_info_from_env


def _token() -> str:
    token = [uuid.uuid4().hex if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(token, src=0)
    return token[0]


def once_per_node(compute: Callable[[], np.ndarray], what: str) -> np.ndarray:
    """``compute()`` on the node's local rank 0, its result on every rank of the node.

    ``what`` names the work in the file name (letters, digits, '-'). The array must be of a plain numpy dtype (it
    travels through ``np.save``/``np.load`` without pickling). Every rank of the job must call this together (it
    holds two barriers). An exception in ``compute`` is raised on local rank 0, and torchrun then ends the job;
    a rank that finds no result file (a temporary folder that is not node-local or not writable) raises a
    RuntimeError naming it.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return compute()
    local_rank = world_info_from_env()[0]
    path = os.path.join(tempfile.gettempdir(), f"open_clip_ext-{what}-{_token()}.npy")
    try:
        if local_rank == 0:
            result = compute()
            # a temporary name of this rank's own: where nodes share the folder, each node's rank 0 writes (the
            # same check of the same files) and the atomic replace leaves one whole file
            partial = f"{path}.{dist.get_rank()}.tmp"
            with open(partial, "wb") as handle:
                np.save(handle, result, allow_pickle=False)
            os.replace(partial, path)
        dist.barrier()
        if local_rank != 0:
            if not os.path.exists(path):
                raise RuntimeError(f"{what}: local rank 0 of this node wrote no result to {path} (is the temporary "
                                   f"folder {tempfile.gettempdir()} shared between nodes or not writable?)")
            result = np.load(path, allow_pickle=False)
        dist.barrier()  # every rank of the node has read it
    finally:
        if local_rank == 0:
            with contextlib.suppress(FileNotFoundError):  # another node's rank 0 may have removed it first
                os.remove(path)
    return result
