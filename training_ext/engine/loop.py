"""The epoch / step loop shared by both stages: accumulation grouping, optimizer steps, logging, checkpoints.

A stage supplies ``step_fn(micro_batches) -> {loss name: float}``, which runs forward and backward for
``--accum-freq`` micro-batches (calling ``ensure_finite`` before any backward); this module does everything
around it the way open_clip_train's ``train_one_epoch`` and ``main`` do.
"""
import logging
import signal
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch
from tqdm import tqdm

from open_clip_train.distributed import is_master
from open_clip_train.train import AverageMeter

from training_ext.engine.checkpoint import (NonFiniteLossError, ResumeRefused, check_resume_position, checkpoint_dict,
                                           data_position, save_training_state)
from training_ext.engine.preemption import StopRequest, TrainingStopped
from training_ext.engine.optim import schedule_step
from training_ext.data.fingerprint import data_fingerprint
from training_ext.data.loaders import dataset_type, start_epoch_at
from training_ext.data.shard_checks import EmptyDataError

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
    epoch_samples: int = 0            # samples of epoch `epoch` trained (all processes): a prefix of its order
    samples_seen: int = 0             # samples trained since the run began: the lr schedule's position
    data_layout: Dict = field(default_factory=dict)  # the flags that define those positions (checkpoint.py)
    skipped_steps: int = 0            # steps of this run left untrained: too few readable pairs (run_epoch)


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
    started = time.monotonic()
    snapshot = checkpoint_dict(state.model, state.optimizer, state.scaler, state.epoch, state.step, args.name,
                               state.model_cfg, data_position(state.epoch_samples, state.samples_seen,
                                                              state.data_layout))
    state.last_checkpoint = save_training_state(
        snapshot, args.checkpoint_path, end_of_epoch, args.epochs, args.save_frequency,
        args.delete_previous_checkpoint)
    seconds = time.monotonic() - started
    logging.info(f"checkpoint: {state.last_checkpoint} (epoch {state.epoch}, step {state.step}) in {seconds:.1f} s")
    if seconds > SLOW_SAVE_S:
        logging.warning(f"writing a checkpoint took {seconds:.0f} s: a stop on SIGTERM, which writes one after the "
                        f"current step, may not finish within SLURM's default KillWait of 30 s before SIGKILL; "
                        f"have SLURM signal earlier (sbatch --signal=TERM@<seconds>) or write to a faster disk")


# Beyond this, a checkpoint plus a step may not fit between SLURM's SIGTERM and its SIGKILL (KillWait, default 30 s)
SLOW_SAVE_S = 20.0


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
        if state.skipped_steps:
            scalars["skipped_steps"] = state.skipped_steps
        total = self.data.dataloader.num_samples
        logging.info(
            f"Train Epoch: {self.epoch} [{state.epoch_samples}/{total} "
            f"({100.0 * state.epoch_samples / total:.0f}%)] "
            f"Data (t): {self.data_time.avg:.3f} Batch (t): {self.batch_time.avg:.3f}, "
            f"{samples_per_second:#g}/s, {samples_per_second / args.world_size:#g}/s/gpu "
            f"LR: {scalars['lr']:5f} "
            + " ".join(f"{name.capitalize()}: {m.val:#.5g} ({m.avg:#.5g})" for name, m in self.losses.items())
            + (f" Skipped samples: {scalars['skipped_samples']}" if "skipped_samples" in scalars else "")
            + (f" Skipped steps: {scalars['skipped_steps']}" if "skipped_steps" in scalars else ""))
        log_data = {"train/" + name: value for name, value in scalars.items()}
        if self.writer is not None:
            for name, value in log_data.items():
                self.writer.add_scalar(name, value, state.step)
        if args.wandb and wandb is not None:
            wandb.log({**log_data, "step": state.step}, step=state.step)
        self.batch_time.reset()
        self.data_time.reset()


def global_batch(args) -> int:
    """Samples one optimizer step trains, all processes together."""
    return args.batch_size * args.accum_freq * args.world_size


def data_layout(args, data) -> dict:
    """The flags that define a data position (see checkpoint._POSITION_FLAGS) for this run's training data, and
    the data's fingerprint ('data_fingerprint', training_ext.data.fingerprint; its digests are computed when a
    checkpoint is written or a resume is checked)."""
    kind = dataset_type(args, args.train_data)
    return {"dataset_type": kind, "seed": args.seed, "batch_size": args.batch_size, "accum_freq": args.accum_freq,
            "world_size": args.world_size, "workers": args.workers, "epoch_size": int(data.epoch_size),
            "sample_exact": kind != "webdataset", "data_fingerprint": data_fingerprint(args, data, kind)}


def position_training(state: TrainState, args, data, steps_per_epoch: int) -> None:
    """Set where training continues: the resumed checkpoint's data position, checked against this run's flags
    (ResumeRefused before any step when they cannot continue it), or for a checkpoint older than data positions,
    one derived from its step count under this run's flags. Raises ResumeRefused."""
    state.data_layout = data_layout(args, data)
    saved = getattr(args, "resume_position", None)
    if saved is not None:
        check_resume_position(saved, state.data_layout, state.epoch, args.resume)
        state.epoch_samples, state.samples_seen = int(saved["epoch_samples"]), int(saved["samples_seen"])
    elif state.step:
        state.epoch_samples = (state.step - state.epoch * steps_per_epoch) * global_batch(args)
        state.samples_seen = state.step * global_batch(args)
        logging.warning(f"--resume {args.resume} has no data position (an older checkpoint): taking its step count "
                        f"in this run's global batch of {global_batch(args)}, which is right only if --batch-size, "
                        f"--accum-freq and the process count are those of the run that wrote it")
        if not 0 <= state.epoch_samples <= data.dataloader.num_samples:
            raise ResumeRefused(f"--resume {args.resume}: step {state.step} does not fall in epoch {state.epoch} "
                                f"of {steps_per_epoch} steps under this run's flags; resume with the --batch-size, "
                                f"--accum-freq and process count of the run that wrote it")


def usable_micro_batches(pending: List, args) -> Tuple[List, int]:
    """The micro-batches of one step without their unreadable samples, and how many samples other processes' gaps
    cost this one. A None micro-batch (every sample unreadable) is left out; with several processes every micro-batch
    is cut to the shortest process's length, so that all-gathers and gradient averaging see equal shapes."""
    sizes = [0 if batch is None else len(batch[0]) for batch in pending]
    agreed = sizes
    if args.distributed:
        shortest = torch.tensor(sizes, dtype=torch.long, device=args.device)
        torch.distributed.all_reduce(shortest, op=torch.distributed.ReduceOp.MIN)
        agreed = shortest.tolist()
    usable = [batch if keep == size else tuple(part[:keep] for part in batch)
              for batch, size, keep in zip(pending, sizes, agreed) if keep > 0]
    return usable, sum(sizes) - sum(agreed)


def step_pairs(micro_batches: List, args) -> int:
    """The samples one step trains on, all processes together, from ``usable_micro_batches``'s output: with
    several processes every process holds micro-batches of the same lengths, so every process computes the same
    number (and takes the same decision on it without another collective)."""
    return sum(len(batch[0]) for batch in micro_batches) * (args.world_size if args.distributed else 1)


def run_epoch(state: TrainState, args, data, step_fn: Callable, after_update: Callable, writer,
              extra_scalars: Callable, steps_per_epoch: int, min_pairs: int = 1,
              stop: Optional[StopRequest] = None) -> bool:
    """Train from the current position to the end of epoch ``state.epoch`` (mid-epoch after a resume), or until
    every process agrees to ``stop`` (asked at every step boundary). Returns whether the epoch was trained to its
    end.

    Positions advance by the global batch per step whether or not some of its samples were unreadable (they are
    counted in the data's SkipLog), so a resume continues after them. A step left with fewer than ``min_pairs``
    readable samples across all processes (``step_pairs``; a contrastive loss needs 2: one pair gives a 1x1 logit
    matrix and a loss of exactly 0, on which weight decay alone would move the weights) takes no optimizer step:
    it is counted in ``state.skipped_steps`` and logged. Its samples still count as trained in the position
    (``epoch_samples``, ``samples_seen``), so a resume continues after them and the lr schedule, which is read at
    ``samples_seen``, moves on as if the step had been taken: the next step gets the lr of its own position.
    ``state.step`` counts optimizer steps only. Raises EmptyDataError when the epoch gives no batch or trains no
    step, RuntimeError when the data runs out early."""
    epoch = state.epoch
    step_samples = global_batch(args)
    steps_left = start_epoch_at(data, epoch, state.epoch_samples, args) // args.accum_freq
    steps_before = steps_per_epoch - steps_left  # in this run's steps, for the log and the progress bar
    state.trained.train()
    logger = StepLogger(args, data, writer, epoch, steps_per_epoch, extra_scalars)
    progress = tqdm(total=steps_per_epoch, initial=steps_before, desc=f"{args.stage} epoch {epoch}",
                    disable=not is_master(args), dynamic_ncols=True, leave=False)
    steps_run, steps_trained, batches, uneven, pending = 0, 0, 0, 0, []
    skipped_before = state.skipped_steps
    end = time.time()
    for batch in (data.dataloader if steps_left > 0 else ()):
        batches += 1
        pending.append(batch)
        if len(pending) < args.accum_freq:
            continue
        logger.data_time.update(time.time() - end)
        micro_batches, cut = usable_micro_batches(pending, args)
        uneven += cut
        pending = []
        pairs = step_pairs(micro_batches, args)
        trains = pairs >= min_pairs
        if trains:
            if not args.skip_scheduler:
                state.scheduler(schedule_step(state.samples_seen, step_samples))
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
            state.step += 1
            steps_trained += 1
        else:
            state.skipped_steps += 1
            _warn_skipped_step(epoch, state, pairs, min_pairs, step_samples)
        state.epoch_samples += step_samples
        state.samples_seen += step_samples
        steps_run += 1
        logger.batch_time.update(time.time() - end)
        if trains:
            logger.log(state, losses, steps_before + steps_run)
        progress.update(1)
        if stop is not None and stop.agreed(args):
            break
        if steps_run >= steps_left:
            break
        if trains and args.save_every_n_steps and state.step % args.save_every_n_steps == 0:
            save(state, args, end_of_epoch=False)
        end = time.time()
    progress.close()
    _report_skipped(data, epoch, uneven, state.skipped_steps - skipped_before, min_pairs)
    if stop is not None and stop.stopping:
        return steps_run >= steps_left
    if steps_left > 0 and not batches:
        raise EmptyDataError(f"epoch {epoch} gave no batch at all: the training data yielded nothing"
                             + _skip_note(data))
    if steps_run < steps_left:
        raise RuntimeError(f"epoch {epoch} ended after {steps_run} of {steps_left} steps: the data ran out "
                           "(check --train-num-samples against the shards)")
    if steps_left > 0 and not steps_trained:
        raise EmptyDataError(f"epoch {epoch} trained no step: no step had {min_pairs} readable "
                             f"sample{'s' if min_pairs > 1 else ''} on all processes together" + _skip_note(data))
    return True


_STEPS_NAMED = 3  # skipped steps named as they happen; the rest are counted at the epoch's end


def _warn_skipped_step(epoch: int, state: TrainState, pairs: int, min_pairs: int, step_samples: int) -> None:
    if state.skipped_steps > _STEPS_NAMED:
        return
    why = ("none of its samples was readable" if not pairs else
           f"only {pairs} of its {step_samples} samples were readable (all processes together), and the loss "
           f"needs {min_pairs} pairs: on {pairs} it would be exactly 0")
    logging.warning(f"epoch {epoch}: step at sample {state.epoch_samples} of the epoch skipped, no optimizer step: "
                    f"{why}; its samples count as trained (position and lr schedule move on)"
                    + (" (further skipped steps are only counted)" if state.skipped_steps == _STEPS_NAMED else ""))


def _skip_note(data) -> str:
    skipped = getattr(data, "skipped", None)
    return f" (samples skipped: {skipped.summary()})" if skipped is not None and skipped.get() else ""


def _report_skipped(data, epoch: int, uneven: int, skipped_steps: int, min_pairs: int) -> None:
    """Samples left out so far, by reason, and steps left untrained in this epoch, at every epoch end (the first
    few were named as they happened)."""
    skipped = getattr(data, "skipped", None)
    if skipped is not None and skipped.summary():  # samples, or shard reads that broke off without a skip
        logging.warning(f"epoch {epoch}: samples skipped so far: {skipped.summary()}")
    if skipped_steps:
        logging.warning(f"epoch {epoch}: {skipped_steps} step(s) skipped without an optimizer step: fewer than "
                        f"{min_pairs} readable sample{'s' if min_pairs > 1 else ''} on all processes together")
    if uneven:
        logging.warning(f"epoch {epoch}: {uneven} readable samples left out to keep every process's batch the same "
                        f"size as the shortest (another process had unreadable samples)")


def train(state: TrainState, args, data, step_fn: Callable, after_update: Callable, evaluate: Callable, writer,
          extra_scalars: Callable = dict, min_pairs: int = 1) -> None:
    """Epochs from ``state.epoch`` to ``args.epochs``: train, validate, checkpoint, keep processes in step.
    ``min_pairs``: the fewest samples a step may train on, all processes together (``run_epoch``).

    SIGTERM or SIGINT (engine.preemption) ends training at the next step boundary, the same on every process: a
    checkpoint of every completed step is written (mid-epoch, or the epoch's own when the signal came in its last
    step, whose validation is then skipped) and TrainingStopped is raised; when the last epoch is done, training
    ends normally instead.

    Raises ResumeRefused (before any step) when a resumed position cannot be continued under this run's flags,
    TrainingStopped on a signal."""
    steps_per_epoch = data.dataloader.num_batches // args.accum_freq
    if steps_per_epoch < 1:
        raise ValueError(f"an epoch has {data.dataloader.num_batches} batches of {args.batch_size} per process, "
                         f"fewer than --accum-freq {args.accum_freq}: use less --batch-size or --accum-freq")
    position_training(state, args, data, steps_per_epoch)
    if state.epoch >= args.epochs:
        logging.info(f"nothing to train: {state.epoch} of {args.epochs} epochs already done")
    with StopRequest(args.rank) as stop:
        while state.epoch < args.epochs:
            if is_master(args):
                logging.info(f"Start epoch {state.epoch}" + (f" at sample {state.epoch_samples}"
                                                               if state.epoch_samples else ""))
            if not run_epoch(state, args, data, step_fn, after_update, writer, extra_scalars, steps_per_epoch,
                             min_pairs, stop):
                _stop_with_checkpoint(state, args, stop.stopping, end_of_epoch=False)
            state.epoch += 1
            state.epoch_samples = 0
            if is_master(args) and not stop.stopping:
                evaluate(state.epoch)
            elif is_master(args) and args.val_data and val_due(args, state.epoch):
                logging.warning(f"validation after epoch {state.epoch} skipped: stopping on "
                                f"{signal.Signals(stop.stopping).name}")
            if stop.stopping and state.epoch < args.epochs:
                _stop_with_checkpoint(state, args, stop.stopping, end_of_epoch=True)
            save(state, args, end_of_epoch=True)
            if args.distributed:
                torch.distributed.barrier()
            if state.epoch < args.epochs and stop.agreed(args):  # a signal during validation or the save
                raise _stopped(state, args, stop.stopping)


def _stop_with_checkpoint(state: TrainState, args, signum: int, end_of_epoch: bool) -> None:
    """Write the checkpoint of every completed step (rank 0), wait until it is written (so that no process exits
    first: torchrun would then terminate the writer), and raise TrainingStopped."""
    logging.info(f"{signal.Signals(signum).name}: stopping at epoch {state.epoch} step {state.step}, "
                 f"{state.epoch_samples} samples into the epoch")
    save(state, args, end_of_epoch=end_of_epoch)
    if args.distributed:
        torch.distributed.barrier()
    raise _stopped(state, args, signum)


def _stopped(state: TrainState, args, signum: int) -> TrainingStopped:
    return TrainingStopped(signum, state.last_checkpoint if args.save_logs else None, state.epoch, state.step)


def val_due(args, epoch: int) -> bool:
    """open_clip_train's rule: validate every --val-frequency epochs and after the last."""
    return bool(args.val_frequency) and (epoch % args.val_frequency == 0 or epoch == args.epochs)

