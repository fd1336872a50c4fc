"""Optimizer, gradient scaler and learning-rate schedule, with open_clip_train's choices and flags."""
import logging

import torch

from open_clip_train.scheduler import const_lr, const_lr_cooldown, cosine_lr


def _no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """open_clip_train's rule: gains, biases, norms and the logit scale get no weight decay."""
    return param.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name


def create_optimizer(model: torch.nn.Module, args) -> torch.optim.Optimizer:
    """AdamW over the parameters that require grad (frozen towers are left out), or a timm optimizer."""
    trainable = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
    if not trainable:
        raise ValueError("nothing to train: every parameter is frozen (check --lock-image / --lock-text)")
    opt = args.opt.lower()
    if opt.startswith("timm/"):
        from timm.optim import create_optimizer_v2
        extra = {}
        if args.beta1 is not None:
            extra["betas"] = (args.beta1, args.beta2)
        if args.momentum is not None:
            extra["momentum"] = args.momentum
        # the model, as open_clip_train passes it: timm then leaves 1-d weights, biases and the model's
        # no_weight_decay() names out of weight decay, and frozen parameters out of the optimizer
        return create_optimizer_v2(model, opt[len("timm/"):], lr=args.lr, weight_decay=args.wd, eps=args.eps,
                                   **extra)
    if opt != "adamw":
        raise ValueError(f"unknown optimizer {args.opt!r}: use adamw or timm/<name>")
    groups = [
        {"params": [p for n, p in trainable if _no_weight_decay(n, p)], "weight_decay": 0.0},
        {"params": [p for n, p in trainable if not _no_weight_decay(n, p)], "weight_decay": args.wd},
    ]
    optimizer, kernel = _adamw(groups, lr=args.lr, betas=(args.beta1, args.beta2), eps=args.eps)
    logging.info(f"AdamW ({kernel}) over {sum(p.numel() for _, p in trainable):,} trainable parameters "
                 f"(lr {args.lr}, wd {args.wd}, betas ({args.beta1}, {args.beta2}), eps {args.eps})")
    return optimizer


def _adamw(groups, **options):
    """The fused AdamW kernel where this torch has it for the parameters' device (CUDA, and CPU since torch 2.4),
    else the multi-tensor one. Same update as torch's default per-parameter loop, which on CPU takes seconds per
    step for a ViT-B text tower (its token embedding alone has 25M weights)."""
    for kernel in ("fused", "foreach"):
        try:
            return torch.optim.AdamW(groups, **options, **{kernel: True}), kernel
        except (RuntimeError, ValueError, TypeError):
            continue
    return torch.optim.AdamW(groups, **options), "for-loop"


def create_scaler(args, device: torch.device) -> torch.amp.GradScaler:
    """A GradScaler, enabled for fp16 autocast ('amp') as in open_clip_train. Other precisions get a disabled one
    (``scale`` returns the loss, ``step`` is ``optimizer.step``), so callers never branch on its absence."""
    return torch.amp.GradScaler(device=device.type, enabled=args.precision == "amp")


def create_scheduler(optimizer, args, steps_per_epoch: int):
    """open_clip_train's schedules (cosine / const / const-cooldown) over optimizer steps."""
    total_steps = steps_per_epoch * args.epochs
    if args.lr_scheduler == "cosine":
        return cosine_lr(optimizer, args.lr, args.warmup, total_steps)
    if args.lr_scheduler == "const":
        return const_lr(optimizer, args.lr, args.warmup, total_steps)
    if args.lr_scheduler == "const-cooldown":
        if args.epochs_cooldown is None:
            raise ValueError("--lr-scheduler const-cooldown needs --epochs-cooldown")
        return const_lr_cooldown(optimizer, args.lr, args.warmup, total_steps, steps_per_epoch * args.epochs_cooldown,
                                 args.lr_cooldown_power, args.lr_cooldown_end)
    raise ValueError(f"unknown --lr-scheduler {args.lr_scheduler!r}: cosine, const or const-cooldown")


def schedule_step(samples_seen: int, global_batch: int):
    """The schedule's position: the samples trained so far, counted in optimizer steps of this run's global batch
    (batch x accum x processes). A run resumed with another batch size stays at the same fraction of training
    (the schedules above are over this run's steps per epoch x epochs); for an unchanged run it is the step count."""
    steps, rest = divmod(samples_seen, global_batch)
    return steps if rest == 0 else samples_seen / global_batch
