"""The one engine both stages run on: the set-up sequence is written once, a stage overrides a few hooks.

The shape follows torchtitan's ``Trainer`` (one class owns the sequence; a variant such as its Flux trainer
overrides a handful of methods) and open_clip's task API (``open_clip/task``: a task object builds its models and
computes ``training_forward``), so that moving the stages onto open_clip's task API later is cheap.

The sequence (``run_training``):
  --resume's file checked (its zip directory) -> seed -> stage.build_models -> --cope-impl (and the line
  naming CoPE's attention) -> grad checkpointing
  -> per-rank seed -> params.txt -> optimizer -> GradScaler -> --resume -> tokenizer -> stage.train_data
  -> validation data -> lr schedule -> wandb -> DDP wrap of stage.training_module -> TrainState
  -> stage.make_step -> validation -> epoch loop.
"""
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

import open_clip
import torch
from open_clip_ext.convert import CheckpointError
from torch import nn

from training_ext.common.csv_table import CsvFormatError
from training_ext.common.text_files import TextDecodeError
from training_ext.data.loaders import get_image_text_data
from training_ext.data.shard_checks import EmptyDataError, ShardFormatError
from training_ext.engine.builders import apply_cope_impl, resume_if_asked, trained_model_config
from training_ext.engine.distributed import wrap_for_processes
from training_ext.engine.loop import TrainState, train
from training_ext.engine.optim import create_optimizer, create_scaler, create_scheduler
from training_ext.data.teacher_cache import TeacherCacheError
from training_ext.engine.checkpoint import CheckpointWriteError, NonFiniteLossError, require_checkpoint_file
from training_ext.engine.preemption import TrainingStopped
from training_ext.engine.params import StageFlags, fail
from training_ext.engine.session import (RunSetupError, finish_run, open_tensorboard, open_wandb, seed_everything,
                                         start_run, write_params)
from training_ext.engine.validation import make_retrieval_validation


@dataclass
class StageModels:
    """What a stage builds. ``model`` is the CLIP that trains and is checkpointed; validation pairs
    ``image_model``'s image tower with ``model``'s text tower; ``preprocess_*`` are open_clip's transforms."""
    model: nn.Module
    preprocess_train: Callable
    preprocess_val: Callable
    image_model: Optional[nn.Module] = None
    extras: Dict[str, Any] = field(default_factory=dict)  # stage-specific objects (teacher, cache, ...)

    def __post_init__(self):
        if self.image_model is None:
            self.image_model = self.model

    @property
    def image_size(self):
        return self.preprocess_val.transforms[0].size


class TrainingStage(StageFlags):
    """A TULIP stage as the engine sees it: its command line (``StageFlags``: name, flags, checks; importable
    without torch) plus the hooks below. Everything not overridden is the engine's default."""

    # The fewest samples (all processes together) a step may train on; a step that lost more of its samples to
    # unreadable data is skipped and counted (loop.run_epoch). 1 for a per-sample loss; a contrastive loss needs 2.
    min_pairs_per_step: int = 1

    # ------------------------------------------------------------------ hooks
    def build_models(self, args, device: torch.device) -> StageModels:
        raise NotImplementedError

    def train_data(self, args, tokenizer, epoch: int, models: StageModels):
        """open_clip_train's DataInfo for training, positioned at ``epoch``."""
        raise NotImplementedError

    def training_module(self, models: StageModels) -> nn.Module:
        """The module whose forward the step calls (and DDP wraps)."""
        raise NotImplementedError

    def make_step(self, args, device, trained: nn.Module, models: StageModels, scaler) -> Callable:
        """``step(micro_batches) -> {loss name: float}``: forward and backward of --accum-freq micro-batches."""
        raise NotImplementedError

    def after_update(self, models: StageModels) -> None:
        """Called after every optimizer step."""

    def extra_scalars(self, models: StageModels) -> Dict[str, float]:
        """Scalars logged with the losses."""
        return {}


def run_training(stage: TrainingStage, args, device: torch.device, writer) -> TrainState:
    """The whole training run of ``stage`` from parsed flags; returns the final state."""
    if args.resume:  # what --resume latest chose is known only now; still before any model is built
        require_checkpoint_file(args.resume, resume_latest=os.path.dirname(os.path.abspath(args.resume))
                                == os.path.abspath(args.checkpoint_path))
    seed_everything(args.seed)
    models = stage.build_models(args, device)
    apply_cope_impl(args, models.model, device)
    if args.grad_checkpointing:
        models.model.set_grad_checkpointing()
    seed_everything(args.seed + args.rank)
    write_params(args)

    optimizer = create_optimizer(models.model, args)
    scaler = create_scaler(args, device)
    epoch, step = resume_if_asked(args, models.model, optimizer, scaler)  # into the trained model only
    tokenizer = open_clip.get_tokenizer(args.model, context_length=args.force_context_length,
                                        cache_dir=args.cache_dir)
    train_data = stage.train_data(args, tokenizer, epoch, models)
    val_data = None
    if args.val_data:
        val_data = get_image_text_data(args, tokenizer, models.preprocess_val, is_train=False,
                                       image_size=models.image_size)
    scheduler = create_scheduler(optimizer, args, train_data.dataloader.num_batches // args.accum_freq)
    open_wandb(args, train_data.dataloader.num_samples)

    trained = compile_if_asked(wrap_for_processes(stage.training_module(models), args, device), args)
    state = TrainState(model=models.model, trained=trained, optimizer=optimizer, scaler=scaler, scheduler=scheduler,
                       model_cfg=trained_model_config(args, models.model), epoch=epoch, step=step,
                       last_checkpoint=args.resume)
    step_fn = stage.make_step(args, device, trained, models, scaler)
    evaluate = make_retrieval_validation(args, models.image_model, models.model, val_data, device, writer, state)
    train(state, args, train_data, step_fn, after_update=lambda: stage.after_update(models), evaluate=evaluate,
          writer=writer, extra_scalars=lambda: stage.extra_scalars(models), min_pairs=stage.min_pairs_per_step)
    return state


def run_stage(args, stage: TrainingStage) -> TrainState:
    """Set the run up, train ``stage`` on the engine and always close what was opened."""
    device = start_run(args)
    writer, completed = None, False
    try:
        writer = open_tensorboard(args)
        state = run_training(stage, args, device, writer)
        completed = True
        return state
    finally:
        finish_run(args, writer, completed)


def compile_if_asked(trained: nn.Module, args) -> nn.Module:
    """--torchcompile as open_clip_train's main applies it: torch.compile of the module the step runs (after the
    DDP wrap); checkpoints keep saving the uncompiled model, which shares its weights."""
    if not args.torchcompile:
        return trained
    if args.grad_checkpointing and args.distributed:
        # open_clip_train's workaround: compile + grad checkpointing work, but DDP's dynamo optimizer must be off
        torch._dynamo.config.optimize_ddp = False
    logging.info("--torchcompile: compiling the trained module")
    return torch.compile(trained)


def run_command(args, stage: TrainingStage) -> TrainState:
    """The entry points' main() after parsing: run, and turn a stop the user can act on into one message."""
    try:
        return run_stage(args, stage)
    except TrainingStopped as stopped:  # SIGTERM / SIGINT: the checkpoint is written, say how to go on
        if args.rank == 0:
            print(stopped.report(stage.prog, getattr(args, "command_flags", None), args.name), file=sys.stderr)
        raise SystemExit(stopped.exit_code)
    except (NonFiniteLossError, CheckpointWriteError) as error:
        raise SystemExit(f"stopped: {error}")
    except (TeacherCacheError, CheckpointError) as error:  # a cache or checkpoint file that does not fit the run
        fail(stage.prog, str(error))  # (what the flags and saved configs reveal is refused before anything is built)
    except (ShardFormatError, EmptyDataError, CsvFormatError, TextDecodeError, RunSetupError) as error:
        # bad data found once reading starts: the message names the file, row or shard; a traceback adds nothing
        fail(stage.prog, str(error))
