"""One training run's surroundings, as open_clip_train sets them up: processes, folders, log file, tensorboard,
wandb, seeds and which checkpoint `--resume` means.
"""
import logging
import os
import random
from datetime import datetime
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from open_clip_train.distributed import broadcast_object, init_distributed_device, is_master
from open_clip_train.logger import setup_logging

from training_ext.engine.checkpoint import find_latest_checkpoint

try:
    import wandb
except ImportError:  # optional, as in open_clip_train
    wandb = None

try:
    from torch.utils import tensorboard
except ImportError:
    tensorboard = None


# Handlers this run added to the root logger (removed again by finish_run).
_RUN_LOG_HANDLERS = []
_SET_ASIDE = []  # logs of runs that wrote no checkpoint, renamed before logging starts (named once it has)
# ``extra=`` of a record meant for the run's log file only, not the terminal (the ~130 flag lines of every run)
LOG_FILE_ONLY = {"log_file_only": True}


def _not_file_only(record: logging.LogRecord) -> bool:
    return not getattr(record, "log_file_only", False)


class RunSetupError(RuntimeError):
    """The run cannot start (existing experiment folder, missing logger package...)."""


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _default_name(args) -> str:
    date = datetime.now().strftime("%Y_%m_%d-%H_%M_%S")
    if args.distributed:
        date = broadcast_object(args, date)
    return "-".join([date, f"{args.stage}", f"model_{args.model.replace('/', '-')}", f"lr_{args.lr}",
                     f"b_{args.batch_size}", f"p_{args.precision}"])


def start_run(args) -> torch.device:
    """Initialise processes (torchrun, SLURM or one process, through open_clip_train) and the run folder
    ``<logs>/<name>/`` with out.log, params.txt, checkpoints/ and tensorboard/. Resolves ``--resume latest``."""
    device = init_distributed_device(args)
    if args.name is None:
        args.name = _default_name(args)
    resume_latest = args.resume == "latest"
    run_dir = os.path.join(args.logs, args.name)
    args.log_path = None
    if is_master(args, local=args.log_local):
        os.makedirs(run_dir, exist_ok=True)
        args.log_path = os.path.join(run_dir, f"out-{args.rank}" if args.log_local else "out.log")
        if os.path.exists(args.log_path) and not resume_latest:
            if find_latest_checkpoint(os.path.join(run_dir, "checkpoints")):
                raise RunSetupError(f"experiment {run_dir} already exists; pass another --name or --resume latest")
            # a run that stopped before its first checkpoint: keep its log beside, run again under the same name
            kept = f"{args.log_path}.failed-{datetime.now():%Y%m%d-%H%M%S}"
            os.replace(args.log_path, kept)
            _SET_ASIDE.append(kept)
    handlers_before = list(logging.root.handlers)
    setup_logging(args.log_path, logging.DEBUG if args.debug else logging.INFO)
    _RUN_LOG_HANDLERS[:] = [h for h in logging.root.handlers if h not in handlers_before]
    for handler in _RUN_LOG_HANDLERS:
        if not isinstance(handler, logging.FileHandler):  # the terminal (a FileHandler is a StreamHandler too)
            handler.addFilter(_not_file_only)
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch"):  # setup_logging lowered every logger; torch's INFO chatter is noise here
            logging.getLogger(name).setLevel(logging.WARNING)

    for kept in _SET_ASIDE:
        logging.info(f"{run_dir} held the log of a run that wrote no checkpoint: kept as {kept}, starting afresh")
    _SET_ASIDE.clear()
    for note in getattr(args, "flag_notes", []):  # what TULIP's form and left-out flags were taken to mean
        logging.info(f"flags: {note}")

    args.wandb = "wandb" in args.report_to or "all" in args.report_to
    args.tensorboard = "tensorboard" in args.report_to or "all" in args.report_to
    args.checkpoint_path = os.path.join(run_dir, "checkpoints")
    args.tensorboard_path = os.path.join(run_dir, "tensorboard") if args.tensorboard and is_master(args) else ""
    args.save_logs = bool(args.logs) and args.logs.lower() != "none" and is_master(args)
    if is_master(args):
        for folder in (args.checkpoint_path, args.tensorboard_path):
            if folder:
                os.makedirs(folder, exist_ok=True)
    if args.distributed:
        dist.barrier()

    if resume_latest:
        found = find_latest_checkpoint(args.checkpoint_path) if is_master(args) else None
        args.resume = broadcast_object(args, found) if args.distributed else found
        logging.info(f"--resume latest: {args.resume or 'no checkpoint yet, starting fresh'}")
    if args.precision.startswith("amp") and device.type == "cpu":
        logging.warning("autocast on CPU is much slower than fp32 here; consider --precision fp32")
    logging.info(f"process {args.rank} of {args.world_size} on {device}"
                 f"{' (distributed)' if args.distributed else ''}")
    return device


def write_params(args) -> None:
    """params.txt and the run's log file get every flag, as open_clip_train writes them; the terminal one line
    saying where they are."""
    if not is_master(args):
        return
    path = os.path.join(args.logs, args.name, "params.txt")
    with open(path, "w") as stream:
        for name in sorted(vars(args)):
            logging.info(f"  {name}: {getattr(args, name)}", extra=LOG_FILE_ONLY)
            stream.write(f"{name}: {getattr(args, name)}\n")
    logging.info(f"flags: all {len(vars(args))} values in {path}" + (" and the log" if args.log_path else ""))


def open_tensorboard(args) -> Optional["tensorboard.SummaryWriter"]:
    if not (args.save_logs and args.tensorboard):
        return None
    if tensorboard is None:
        raise RunSetupError("--report-to tensorboard needs the tensorboard package")
    return tensorboard.SummaryWriter(args.tensorboard_path)


def open_wandb(args, train_samples: int) -> None:
    """wandb.init as open_clip_train does (WANDB_MODE=offline works without network)."""
    if not (args.wandb and is_master(args)):
        return
    if wandb is None:
        raise RunSetupError("--report-to wandb needs the wandb package")
    args.train_sz = train_samples
    wandb.init(project=args.wandb_project_name, name=args.name, id=args.name, notes=args.wandb_notes,
               tags=[args.stage], resume="allow" if args.resume else None,
               config={k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, type(None)))},
               dir=os.path.join(args.logs, args.name))
    params = os.path.join(args.logs, args.name, "params.txt")
    if os.path.exists(params):
        wandb.save(params, base_path=os.path.dirname(params), policy="now")


def finish_run(args, writer, completed: bool) -> None:
    """Close loggers and the process group; also called when the run stops on an error."""
    if writer is not None:
        writer.close()
    if getattr(args, "wandb", False) and is_master(args) and wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=0 if completed else 1)
    if getattr(args, "distributed", False) and dist.is_initialized():
        if completed:
            dist.barrier()
        dist.destroy_process_group()
    _remove_log_handlers()


def _remove_log_handlers() -> None:
    """setup_logging adds handlers to the root logger; drop ours so a second run in one process (tests, notebooks)
    does not write into the first run's log file."""
    for handler in _RUN_LOG_HANDLERS:
        logging.root.removeHandler(handler)
        handler.close()
    _RUN_LOG_HANDLERS.clear()
