"""Data parallelism for the stages: the DDP wrap and gradient-sync control over accumulated micro-batches.

Process-group set-up itself is open_clip_train's (``init_distributed_device``, called by engine.session).
"""
from contextlib import nullcontext

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def wrap_for_processes(module: torch.nn.Module, args, device: torch.device) -> torch.nn.Module:
    """DDP over the parameters that require grad; on CPU without device_ids (open_clip_train 3.3 passes
    device_ids=[cpu] and fails)."""
    if not args.distributed:
        return module
    if args.use_bn_sync:
        module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    options = {"static_graph": True} if args.ddp_static_graph else {}
    device_ids = [device] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, **options)


def no_sync_unless(ddp_model: nn.Module, sync: bool):
    """DDP all-reduces on the last micro-batch only; plain modules have no no_sync."""
    if sync or not hasattr(ddp_model, "no_sync"):
        return nullcontext()
    return ddp_model.no_sync()
