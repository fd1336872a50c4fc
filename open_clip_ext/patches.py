"""Every change this package makes to open_clip's internals, in one place, checked at import.

open_clip has no plugin API for text towers, checkpoint converters or derived configs, so six module-level names
are wrapped
(each wrapper hands anything that is not ours to the original unchanged). This module only dispatches: what
to build lives in towers.py, how to load in convert.py, and the registry entries (derived configs and their
base's pretrained tags) are written by configs.py.

- ``open_clip.model._build_text_tower``: builds a RoPE/CoPE/Long-CLIP tower for ``text_cfg.pos_embed_type``;
  honours a per-tower ``text_cfg.quick_gelu`` (configs.py);
- ``open_clip.model._build_vision_tower``: honours a per-tower ``vision_cfg.quick_gelu`` (open_clip 3.3 passes
  one model-level flag to both builders, and its CLIPVisionCfg rejects unknown keys), otherwise open_clip's own;
- ``open_clip.factory.load_checkpoint``: converts stock / TULIP / own checkpoints onto our models;
- ``open_clip.factory.create_model`` (and ``open_clip.create_model``): forces CustomTextCLIP for our configs,
  takes the activation from the pretrained tag (QuickGELU for OpenAI weights) or from the ``model_cfg`` saved
  in a checkpoint, names close matches for an unknown model;
- ``open_clip.factory.get_model_config`` (and ``open_clip.get_model_config``, which create_model, get_tokenizer and
  every command's name check call): an unregistered ``<base>-<kind>-<N>`` of a registered base is derived and
  registered on first lookup (configs.derive_on_demand), so ``create_model('RN50-rope-248')`` needs no set-up.
Registries extended (by configs.py): ``open_clip.factory._MODEL_CONFIGS`` and ``open_clip.pretrained._PRETRAINED``.
The open_clip range these were tested against is pinned in setup.cfg.
"""
import logging

import open_clip
import open_clip.factory
import open_clip.model
import open_clip.pretrained
import open_clip.transformer

TESTED_OPEN_CLIP = ((3, 3), (3, 4))  # [3.3, 3.4)
_REQUIRED = (
    (open_clip.model, "_build_text_tower"),
    (open_clip.model, "_build_vision_tower"),
    (open_clip.model, "CustomTextCLIP"),
    (open_clip.model, "convert_to_custom_text_state_dict"),
    (open_clip.factory, "load_checkpoint"),
    (open_clip.factory, "create_model"),
    (open_clip.factory, "get_model_config"),
    (open_clip.factory, "parse_model_name"),
    (open_clip.factory, "get_pretrained_cfg"),
    (open_clip.factory, "_MODEL_CONFIGS"),
    (open_clip.factory, "_MODEL_CONFIG_PATHS"),  # read by support.py
    (open_clip.pretrained, "_PRETRAINED"),
    (open_clip.transformer, "text_global_pool"),
    (open_clip.transformer, "lock_text_tower"),
    (open_clip.transformer.TextTransformer, "_embeds"),  # overridden by the Long-CLIP tower
    (open_clip, "create_model"),
    (open_clip, "get_model_config"),
)
_originals = {}


def open_clip_version() -> str:
    return getattr(open_clip, "__version__", "unknown")


def check_open_clip() -> None:
    """Fail loudly, naming the open_clip version, if an internal this package patches has gone."""
    missing = [f"{module.__name__}.{name}" for module, name in _REQUIRED if not hasattr(module, name)]
    if missing:
        raise ImportError(
            f"open_clip_ext cannot patch open_clip {open_clip_version()}: {', '.join(missing)} no longer "
            f"exist(s). open_clip_ext was tested with open_clip_torch >=3.3,<3.4; install that range.")
    try:
        major_minor = tuple(int(p) for p in open_clip_version().split(".")[:2])
    except ValueError:
        return
    low, high = TESTED_OPEN_CLIP
    if not low <= major_minor < high:
        logging.warning(f"open_clip_ext was tested with open_clip_torch >=3.3,<3.4, found {open_clip_version()}")


# Checked before the modules below import open_clip internals themselves, so a missing one is named here.
check_open_clip()

from .configs import (derive_on_demand, gelu_pinned_towers, is_ext_text_cfg, needs_custom_text,  # noqa: E402
                      split_tower_activation, unknown_model_error)
from .convert import load_checkpoint_into, pretrained_uses_quick_gelu  # noqa: E402
from .towers import build_ext_text_tower, is_ext_model  # noqa: E402


def _build_vision_tower(embed_dim, vision_cfg, quick_gelu=False, cast_dtype=None):
    vision_cfg, quick_gelu = split_tower_activation(vision_cfg, quick_gelu)
    return _originals["_build_vision_tower"](embed_dim, vision_cfg, quick_gelu, cast_dtype)


def _build_text_tower(embed_dim, text_cfg, quick_gelu=False, cast_dtype=None):
    text_cfg, quick_gelu = split_tower_activation(text_cfg, quick_gelu)
    if is_ext_text_cfg(text_cfg):
        return build_ext_text_tower(embed_dim, text_cfg, quick_gelu, cast_dtype)
    return _originals["_build_text_tower"](embed_dim, text_cfg, quick_gelu, cast_dtype)


def _load_checkpoint(model, checkpoint_path, strict=True, weights_only=True, device="cpu"):
    if is_ext_model(model):
        return load_checkpoint_into(model, checkpoint_path, strict=strict)
    return _originals["load_checkpoint"](model, checkpoint_path, strict=strict, weights_only=weights_only,
                                         device=device)


def _get_model_config(model_name):
    cfg = _originals["get_model_config"](model_name)
    if cfg is None and open_clip.factory.parse_model_name(model_name)[0] is None:
        return derive_on_demand(model_name)
    return cfg


def _create_model(model_name, pretrained=None, **kwargs):
    schema, identifier = open_clip.factory.parse_model_name(model_name)
    if schema is None:
        name = identifier.replace("/", "-")
        cfg = open_clip.factory.get_model_config(name)
        if cfg is None:
            raise unknown_model_error(name)
        if is_ext_text_cfg(cfg.get("text_cfg")):
            if needs_custom_text(cfg.get("text_cfg")):
                kwargs.setdefault("force_custom_text", True)
            pinned_gelu = gelu_pinned_towers(cfg)
            if kwargs.get("force_quick_gelu") and pinned_gelu:
                logging.warning(f"{name}: force_quick_gelu=True leaves {', '.join(pinned_gelu)} on GELU: a tower's "
                                f"own quick_gelu key wins over the model-level flag")
            if pretrained_uses_quick_gelu(name, pretrained) and not cfg.get("quick_gelu") \
                    and not kwargs.get("force_quick_gelu"):
                # A student initialised from a teacher must compute with the teacher's activation. Towers whose
                # config names its own activation keep it; check_activation compares each tower on load.
                logging.info(f"{name}: pretrained '{pretrained}' was trained with QuickGELU; using QuickGELU")
                kwargs["force_quick_gelu"] = True
    return _originals["create_model"](model_name, pretrained, **kwargs)


def apply() -> None:
    """Install the wrappers once (importing open_clip_ext twice, or reloading it, does not stack them)."""
    if _originals:
        return
    _originals["_build_text_tower"] = open_clip.model._build_text_tower
    _originals["_build_vision_tower"] = open_clip.model._build_vision_tower
    _originals["load_checkpoint"] = open_clip.factory.load_checkpoint
    _originals["create_model"] = open_clip.factory.create_model
    _originals["get_model_config"] = open_clip.factory.get_model_config
    open_clip.model._build_text_tower = _build_text_tower
    open_clip.model._build_vision_tower = _build_vision_tower
    open_clip.factory.load_checkpoint = _load_checkpoint
    open_clip.factory.create_model = _create_model
    open_clip.create_model = _create_model
    open_clip.factory.get_model_config = _get_model_config
    open_clip.get_model_config = _get_model_config
