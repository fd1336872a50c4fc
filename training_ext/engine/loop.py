"""The epoch / step loop shared by both stages: accumulation grouping, optimizer steps, logging, checkpoints.

A stage supplies ``step_fn(micro_batches) -> {loss name: float}``, which runs forward and backward for
``--accum-freq`` micro-batches (calling ``ensure_finite`` before any backward); this module does everything
around it the way open_clip_train's ``train_one_epoch`` and ``main`` do.
"""
import logging
import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch
from tqdm import tqdm

from open_clip_train.distributed import is_master
from open_clip_train.train import AverageMeter

from training_ext.engine.checkpoint import NonFiniteLossError, checkpoint_dict, save_training_state
from training_ext.data.loaders import start_epoch_at

try:
    import wandb
except ImportError:
    wandb = None


@dataclass
class TrainState:
    model: torch.nn.Module            # the unwrapped model whose state_dict is checkpointed
    trained: torch.nn.Module          # what the step runs (DDP wrapper in distributed runs)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler      # disabled unless --precision amp
    scheduler: Callable
    model_cfg: Optional[dict]
    epoch: int = 0                    # completed epochs
    step: int = 0                     # completed optimizer steps
    last_checkpoint: Optional[str] = None


def apply_update(state: TrainState, grad_clip_norm: Optional[float]) -> None:
    """Optimizer step through the GradScaler (a no-op wrapper when disabled), with optional gradient clipping."""
    if grad_clip_norm is not None:
        state.scaler.unscale_(state.optimizer)
        params = [p for p in state.model.parameters() if p.requires_grad]
        torch.nn.utils.clip_grad_norm_(params, grad_clip_norm, norm_type=2.0)
    state.scaler.step(state.optimizer)
    state.scaler.update()


def save(state: TrainState, args, end_of_epoch: bool) -> None:
    if not args.save_logs:
        return
    snapshot = checkpoint_dict(state.model, state.optimizer, state.scaler, state.epoch, state.step, args.name,
                               state.model_cfg)
    state.last_checkpoint = save_training_state(
        snapshot, args.checkpoint_path, end_of_epoch, args.epochs, args.save_frequency,
        args.delete_previous_checkpoint)
    logging.info(f"checkpoint: {state.last_checkpoint} (epoch {state.epoch}, step {state.step})")


class StepLogger:
    """open_clip_train's train log line and train/* scalars (tensorboard, wandb), incl. samples/s and loss terms."""

    def __init__(self, args, data, writer, epoch: int, steps_per_epoch: int, extra_scalars: Callable):
        self.args, self.data, self.writer = args, data, writer
        self.epoch, self.steps_per_epoch = epoch, steps_per_epoch
        self.extra_scalars = extra_scalars
        self.batch_time, self.data_time = AverageMeter(), AverageMeter()
        self.losses: Dict[str, AverageMeter] = {}

    def log(self, state: TrainState, losses: Dict[str, float], steps_in_epoch: int) -> None:
        args = self.args
        global_batch = args.batch_size * args.accum_freq * args.world_size
        for name, value in losses.items():
            self.losses.setdefault(name, AverageMeter()).update(value, args.batch_size)
        last_of_epoch = steps_in_epoch == self.steps_per_epoch
        if not is_master(args) or not ((steps_in_epoch - 1) % args.log_every_n_steps == 0 or last_of_epoch):
            return
        samples_per_second = global_batch / max(self.batch_time.val, 1e-9)
        scalars = {
            "data_time": self.data_time.val,
            "batch_time": self.batch_time.val,
            "samples_per_second": samples_per_second,
            "samples_per_second_per_gpu": samples_per_second / args.world_size,
            "lr": state.optimizer.param_groups[0]["lr"],
            **self.extra_scalars(),
            **{name: meter.val for name, meter in self.losses.items()},
        }
        skipped = getattr(self.data, "skipped", None)
        if skipped is not None and skipped.get():
            scalars["skipped_samples"] = skipped.get()
        total = self.data.dataloader.num_samples
        logging.info(
            f"Train Epoch: {self.epoch} [{steps_in_epoch * global_batch}/{total} "
            f"({100.0 * steps_in_epoch / self.steps_per_epoch:.0f}%)] "
            f"Data (t): {self.data_time.avg:.3f} Batch (t): {self.batch_time.avg:.3f}, "
            f"{samples_per_second:#g}/s, {samples_per_second / args.world_size:#g}/s/gpu "
            f"LR: {scalars['lr']:5f} "
            + " ".join(f"{name.capitalize()}: {m.val:#.5g} ({m.avg:#.5g})" for name, m in self.losses.items())
            + (f" Skipped samples: {scalars['skipped_samples']}" if "skipped_samples" in scalars else ""))
        log_data = {"train/" + name: value for name, value in scalars.items()}
        if self.writer is not None:
            for name, value in log_data.items():
                self.writer.add_scalar(name, value, state.step)
        if args.wandb and wandb is not None:
            wandb.log({**log_data, "step": state.step}, step=state.step)
        self.batch_time.reset()
        self.data_time.reset()


def run_epoch(state: TrainState, args, data, step_fn: Callable, after_update: Callable, writer,
              extra_scalars: Callable, steps_per_epoch: int) -> None:
    """Train from the current step to the end of epoch ``state.epoch`` (mid-epoch after a resume)."""
    epoch = state.epoch
    steps_done = state.step - epoch * steps_per_epoch
    start_epoch_at(data, epoch, steps_done * args.accum_freq)
    state.trained.train()
    logger = StepLogger(args, data, writer, epoch, steps_per_epoch, extra_scalars)
    progress = tqdm(total=steps_per_epoch, initial=steps_done, desc=f"{args.stage} epoch {epoch}",
                    disable=not is_master(args), dynamic_ncols=True, leave=False)
    micro_batches = []
    end = time.time()
    for batch in data.dataloader:
        micro_batches.append(batch)
        if len(micro_batches) < args.accum_freq:
            continue
        logger.data_time.update(time.time() - end)
        if not args.skip_scheduler:
            state.scheduler(state.step)
        state.optimizer.zero_grad(set_to_none=True)
        try:
            losses = step_fn(micro_batches)
        except NonFiniteLossError as error:
            message = (f"{error} at epoch {epoch} step {state.step}; stopping. The last good checkpoint is "
                       f"untouched: {state.last_checkpoint or 'none was written yet'}")
            logging.error(message)
            raise NonFiniteLossError(message) from None
        apply_update(state, args.grad_clip_norm)
        after_update()
        micro_batches = []
        state.step += 1
        steps_done += 1
        logger.batch_time.update(time.time() - end)
        logger.log(state, losses, steps_done)
        progress.update(1)
        if steps_done >= steps_per_epoch:
            break
        if args.save_every_n_steps and state.step % args.save_every_n_steps == 0:
            save(state, args, end_of_epoch=False)
        end = time.time()
    progress.close()
    if steps_done < steps_per_epoch:
        raise RuntimeError(f"epoch {epoch} ended after {steps_done} of {steps_per_epoch} steps: the data ran out "
                           "(check --train-num-samples against the shards)")


def train(state: TrainState, args, data, step_fn: Callable, after_update: Callable, evaluate: Callable, writer,
          extra_scalars: Callable = dict) -> None:
    """Epochs from ``state.epoch`` to ``args.epochs``: train, validate, checkpoint, keep processes in step."""
    steps_per_epoch = data.dataloader.num_batches // args.accum_freq
    if steps_per_epoch < 1:
        raise ValueError(f"an epoch has {data.dataloader.num_batches} batches of {args.batch_size} per process, "
                         f"fewer than --accum-freq {args.accum_freq}: use less --batch-size or --accum-freq")
    if state.epoch >= args.epochs:
        logging.info(f"nothing to train: {state.epoch} of {args.epochs} epochs already done")
    while state.epoch < args.epochs:
        if is_master(args):
            logging.info(f"Start epoch {state.epoch}")
        run_epoch(state, args, data, step_fn, after_update, writer, extra_scalars, steps_per_epoch)
        state.epoch += 1
        if is_master(args):
            evaluate(state.epoch)
        save(state, args, end_of_epoch=True)
        if args.distributed:
            torch.distributed.barrier()


def val_due(args, epoch: int) -> bool:
    """open_clip_train's rule: validate every --val-frequency epochs and after the last."""
    return bool(args.val_frequency) and (epoch % args.val_frequency == 0 or epoch == args.epochs)

