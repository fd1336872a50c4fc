"""Key-level facts about CLIP state dicts, shared by the loader, both training stages and export.

One definition each of: the ``module.`` prefix DDP adds, and which tensors belong to the text side of a CLIP
(everything but the vision tower and the contrastive temperature / bias).
"""
from typing import Dict, Mapping, TypeVar

T = TypeVar("T")

DDP_PREFIX = "module."
# Model-level contrastive parameters: not part of either tower.
LOGIT_KEYS = ("logit_scale", "logit_bias")


def strip_module_prefix(state_dict: Mapping[str, T]) -> Dict[str, T]:
    """Drop the ``module.`` prefix ``DistributedDataParallel`` adds to every key (keys without it are kept)."""
    return {k[len(DDP_PREFIX):] if k.startswith(DDP_PREFIX) else k: v for k, v in state_dict.items()}


def is_vision_key(key: str) -> bool:
    return key.startswith("visual.")


def is_text_key(key: str) -> bool:
    """Text-side tensors of a CLIP state dict (flat or ``text.``-prefixed): all but ``visual.*`` and the logit
    scale / bias."""
    return not is_vision_key(key) and key not in LOGIT_KEYS


def is_image_side_key(key: str) -> bool:
    """What stage 1 freezes and copies from the teacher: the vision tower and the logit scale / bias."""
    return not is_text_key(key)
