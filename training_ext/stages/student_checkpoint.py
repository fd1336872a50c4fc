"""Putting a stage-1 student text tower into the stage-2 CLIP model.

TULIP's reference rebuilt the text projection instead of keeping the distilled one; here every text tensor of
the student checkpoint (text projection included) replaces the model's, and nothing else is touched.
"""
import logging

import torch

from open_clip_ext import read_checkpoint
from open_clip_ext.convert import check_position_config
from open_clip_ext.state_dicts import is_text_key, strip_module_prefix


def load_student_text_tower(model: torch.nn.Module, path: str) -> int:
    """Copy the text tower of a stage-1 checkpoint into ``model``; returns the number of tensors copied.

    Fails naming the file and keys when the checkpoint's text tower does not fit the model (another context
    length, position encoding or width), or when its position settings differ from the model's config.
    """
    state_dict, metadata = read_checkpoint(path)
    state_dict = strip_module_prefix(state_dict)
    if hasattr(getattr(model, "text", None), "position_config"):
        check_position_config(model.text, metadata, path)
    wanted = {k: v for k, v in model.state_dict().items() if is_text_key(k)}
    missing = sorted(k for k in wanted if k not in state_dict)
    misfit = sorted(f"{k} {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
                    for k, v in wanted.items() if k in state_dict and state_dict[k].shape != v.shape)
    if missing or misfit:
        raise ValueError(
            f"--student-checkpoint {path} does not fit --model's text tower: "
            + "; ".join(part for part in (
                f"missing {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}" if missing else "",
                f"shapes {', '.join(misfit[:8])}" if misfit else "") if part))
    with torch.no_grad():
        for key, tensor in wanted.items():
            tensor.copy_(state_dict[key])
    logging.info(f"text tower ({len(wanted)} tensors, distilled text projection included) from {path}; "
                 "vision tower and logit scale from --pretrained")
    return len(wanted)
