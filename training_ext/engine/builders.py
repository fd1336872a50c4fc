"""Models both stages build from open_clip_train's flags, and what resuming restores into them."""
import logging
import math
from typing import Optional, Tuple

import open_clip
import open_clip_ext  # noqa: F401  (registers the relative-position configs and loaders with open_clip)
import torch
from open_clip_ext.convert import uses_quick_gelu

from training_ext.engine.checkpoint import read_training_state, restore_training_state


def create_clip(args, name: str, pretrained: str, device: torch.device, with_flags: bool = True):
    """(model, preprocess_train, preprocess_val) through open_clip, honouring open_clip_train's model flags.

    The --force-*/--image-* flags describe the trained model, so the teacher is built without them.
    """
    options = {}
    if isinstance(args.force_image_size, (list, tuple)) and len(args.force_image_size) == 1:
        args.force_image_size = args.force_image_size[0]
    if with_flags:
        options = dict(
            force_quick_gelu=args.force_quick_gelu, force_custom_text=args.force_custom_text,
            force_patch_dropout=args.force_patch_dropout, force_image_size=args.force_image_size,
            force_context_length=args.force_context_length, image_mean=args.image_mean, image_std=args.image_std,
            image_interpolation=args.image_interpolation, image_resize_mode=args.image_resize_mode,
            aug_cfg=args.aug_cfg, pretrained_image=args.pretrained_image)
    return open_clip.create_model_and_transforms(
        name, pretrained or None, precision=args.precision, device=device, output_dict=True,
        cache_dir=args.cache_dir, **options)


def trained_model_config(args, model: torch.nn.Module) -> Optional[dict]:
    """The open_clip config of the model as built (flag overrides applied), saved in every checkpoint."""
    config = open_clip.get_model_config(args.model)
    if config is None:
        return None
    if args.force_context_length:
        config["text_cfg"]["context_length"] = args.force_context_length
    if args.force_image_size:
        config["vision_cfg"]["image_size"] = args.force_image_size
    if uses_quick_gelu(model):
        # e.g. a student initialised from OpenAI weights computes with QuickGELU even if its config says GELU
        config["quick_gelu"] = True
    return config


def resume_if_asked(args, model, optimizer, scaler) -> Tuple[int, int]:
    """Restore model, optimizer and scaler from --resume (a path, or what 'latest' resolved to).

    Returns (completed epochs, completed steps); (0, 0) for a fresh run.
    """
    if not args.resume:
        return 0, 0
    state = read_training_state(args.resume)
    restore_training_state(state, model, optimizer, scaler)
    epoch, step = int(state["epoch"]), int(state.get("step", 0))
    logging.info(f"=> resumed '{args.resume}' (epoch {epoch}, step {step})")
    return epoch, step


def clamp_logit_scale(model: torch.nn.Module) -> None:
    """CLIP's clamp of the learned temperature to at most 100, after each update (as open_clip_train)."""
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))
