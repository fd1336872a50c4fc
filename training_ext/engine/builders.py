"""Models both stages build from open_clip_train's flags, and what resuming restores into them."""
import logging
import math
from typing import Optional, Tuple

import open_clip
import open_clip_ext  # noqa: F401  (registers the relative-position configs and loaders with open_clip)
import torch
from open_clip_ext.configs import with_tower_activations
from open_clip_ext.convert import pretrained_uses_quick_gelu, uses_quick_gelu
from open_clip_ext.kernels.dispatch import announce, choose_cope_kernel

from training_ext.engine.checkpoint import read_training_state, restore_training_state


def _not_random_init_warning(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("No pretrained weights loaded for model")


def create_clip(args, name: str, pretrained: str, device: torch.device, with_flags: bool = True,
                weights_follow: bool = False):
    """(model, preprocess_train, preprocess_val) through open_clip, honouring open_clip_train's model flags.

    The --force-*/--image-* flags describe the trained model, so the teacher is built without them.
    ``weights_follow``: the caller loads the weights itself next (and says so), so open_clip's warning that the
    model was "initialized randomly" is dropped: it would contradict the caller's line that follows.
    """
    # Every model computes with the activation its weights were trained with: open_clip 3.3 only warns when e.g.
    # ViT-L-14 meets the QuickGELU 'openai' weights, and TULIP's command lines name exactly that pair.
    weights_quick_gelu = pretrained_uses_quick_gelu(name, pretrained)
    options = {"force_quick_gelu": weights_quick_gelu}
    if isinstance(args.force_image_size, (list, tuple)) and len(args.force_image_size) == 1:
        args.force_image_size = args.force_image_size[0]
    if with_flags:
        options = dict(
            force_quick_gelu=args.force_quick_gelu or weights_quick_gelu, force_custom_text=args.force_custom_text,
            force_patch_dropout=args.force_patch_dropout, force_image_size=args.force_image_size,
            force_context_length=args.force_context_length, image_mean=args.image_mean, image_std=args.image_std,
            image_interpolation=args.image_interpolation, image_resize_mode=args.image_resize_mode,
            aug_cfg=args.aug_cfg, pretrained_image=args.pretrained_image)
    if weights_follow:  # open_clip logs through the root logger
        logging.root.addFilter(_not_random_init_warning)
    try:
        return open_clip.create_model_and_transforms(
            name, pretrained or None, precision=args.precision, device=device, output_dict=True,
            cache_dir=args.cache_dir, **options)
    finally:
        if weights_follow:
            logging.root.removeFilter(_not_random_init_warning)


def apply_cope_impl(args, model: torch.nn.Module, device: torch.device) -> None:
    """--cope-impl onto the model's CoPE text tower, and one INFO line naming the CoPE attention that will run and
    why (engine.preflight has refused what cannot run). Nothing for other towers."""
    text = getattr(model, "text", None)
    if getattr(text, "position", None) != "cope":
        return
    impl = args.cope_impl or "function"
    text.set_cope_impl(impl)
    kernel, why = choose_cope_kernel(impl, device.type, text.context_length, source=f"--cope-impl {impl}")
    if args.torchcompile and kernel != "autograd":
        kernel, why = "torch", "--torchcompile: compiled code runs the PyTorch op"
    announce(kernel, why, always=True)


def trained_model_config(args, model: torch.nn.Module) -> Optional[dict]:
    """The open_clip config of the model as built (flag overrides applied), saved in every checkpoint."""
    config = open_clip.get_model_config(args.model)
    if config is None:
        return None
    if args.force_context_length:
        config["text_cfg"]["context_length"] = args.force_context_length
    if args.force_image_size:
        config["vision_cfg"]["image_size"] = args.force_image_size
    # Each tower's activation as built: a student initialised from OpenAI weights computes with QuickGELU even if
    # its config says GELU, and TULIP-style models mix the two; the saved config must rebuild what was trained.
    text_tower = model.text if hasattr(model, "text") else model.transformer  # CustomTextCLIP / CLIP
    return with_tower_activations(config, vision_quick_gelu=uses_quick_gelu(model.visual),
                                  text_quick_gelu=uses_quick_gelu(text_tower))


def resume_if_asked(args, model, optimizer, scaler) -> Tuple[int, int]:
    """Restore model, optimizer and scaler from --resume (a path, or what 'latest' resolved to).

    Returns (completed epochs, completed steps); (0, 0) for a fresh run. The checkpoint's data position (samples
    into the epoch, samples seen, and the flags that define them; None in checkpoints older than it) is left in
    ``args.resume_position``: the epoch loop continues from it, or refuses before training when this run's flags
    cannot continue it (training_ext.engine.checkpoint.check_resume_position).
    """
    args.resume_position = None
    if not args.resume:
        return 0, 0
    state = read_training_state(args.resume)
    restore_training_state(state, model, optimizer, scaler)
    epoch, step = int(state["epoch"]), int(state.get("step", 0))
    args.resume_position = state.get("data_position")
    position = args.resume_position
    logging.info(f"=> resumed '{args.resume}' (epoch {epoch}, step {step})"
                 + (f", {position['epoch_samples']} samples into the epoch" if position else ""))
    return epoch, step


def clamp_logit_scale(model: torch.nn.Module) -> None:
    """CLIP's clamp of the learned temperature to at most 100, after each update (as open_clip_train)."""
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))
