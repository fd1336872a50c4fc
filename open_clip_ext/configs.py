"""Model configs: the JSONs shipped in model_configs/ and the derivation of a variant from any stock config.

A relative-position variant is the stock config with three changes: ``custom_text: true`` (the tower has no
``positional_embedding`` for ``CLIP.__init__`` to copy), ``text_cfg.pos_embed_type`` in {"rope", "cope"} and the
new ``text_cfg.context_length``. Everything else (widths, activation, vision tower) stays the base's, which is
what lets the base's pretrained weights initialise the variant.

Two absolute-position variants are derived the same way, for comparison: "longclip" (Long-CLIP's stretched
table with frozen leading rows, see longclip.py; custom text tower) and "uniform" (a stock CLIP whose 77 learned
positions open_clip itself resizes uniformly on load, i.e. ``force_context_length``; stock CLIP class).

Activation per tower: open_clip has one model-level ``quick_gelu`` for both towers. A tower config may carry its
own ``quick_gelu`` (``vision_cfg.quick_gelu``, ``text_cfg.quick_gelu``), which wins over the model-level flag for
that tower; patches.py strips the key before open_clip's tower configs (which reject unknown keys) see it.
TULIP's released weights need it: its stage 2 built the CLIP with open_clip's OpenAI loader (QuickGELU) and
swapped in a GELU RoPE/CoPE student (github.com/ivonajdenkoska/tulip @ 132c174f,
open_clip/training/main_context_finetune_rope.py), so they hold a QuickGELU image tower and a GELU text tower.
"""
import difflib
import re
from copy import deepcopy
from pathlib import Path
from typing import Optional

import open_clip
import open_clip.pretrained

RELATIVE_POSITION_TYPES = ("rope", "cope")
POSITION_TYPES = RELATIVE_POSITION_TYPES + ("longclip", "uniform")
# Towers open_clip's CLIP class cannot host (it copies one ``positional_embedding`` parameter from the tower).
CUSTOM_TEXT_POSITION_TYPES = ("rope", "cope", "longclip")
# Text-config keys this package adds to open_clip's CLIPTextCfg, with their defaults.
POSITION_DEFAULTS = {
    "rope": {"rope_theta": 10000.0, "rope_ntk_factor": None, "rope_ntk_trained_length": 77},
    "cope": {"cope_qk_norm": True, "cope_scale": "tulip"},
    "longclip": {"longclip_keep_positions": 20},
    "uniform": {},
}
EXT_TEXT_KEYS = {"pos_embed_type"} | {k for d in POSITION_DEFAULTS.values() for k in d}
# Per-tower activation key (in vision_cfg / text_cfg), named like open_clip's model-level flag.
TOWER_ACTIVATION_KEY = "quick_gelu"
TOWER_CONFIG_KEYS = ("vision_cfg", "text_cfg")
# TULIP's released checkpoints evaluated the way its eval_tulip.py run with --pretrained=<file> does (GELU image
# tower): docs/checkpoints.md.
TULIP_EVAL_SCRIPT_SUFFIX = "-evalscript"
_VARIANT_NAME = re.compile(rf"^(?P<base>.+)-(?P<position>{'|'.join(POSITION_TYPES)})-(?P<context>\d+)$")
# Stock text-tower options that a relative-position tower does not reproduce.
_UNSUPPORTED_TEXT = {"hf_model_name": None, "embed_cls": False, "no_causal_mask": False, "cls_emb": None}


def shipped_config_dir() -> Path:
    """model_configs/ as installed (package data inside open_clip_ext) or, in a checkout, at the repository root."""
    package_dir = Path(__file__).resolve().parent
    installed = package_dir / "model_configs"
    return installed if installed.is_dir() else package_dir.parent / "model_configs"


def is_ext_text_cfg(text_cfg) -> bool:
    """A text config whose tower this package builds (any ``pos_embed_type`` it knows)."""
    return isinstance(text_cfg, dict) and text_cfg.get("pos_embed_type") in POSITION_TYPES


def needs_custom_text(text_cfg) -> bool:
    return isinstance(text_cfg, dict) and text_cfg.get("pos_embed_type") in CUSTOM_TEXT_POSITION_TYPES


def unknown_model_error(name: str) -> RuntimeError:
    close = difflib.get_close_matches(name, open_clip.list_models(), n=8, cutoff=0.6)
    hint = f" Close matches: {', '.join(close)}." if close else ""
    return RuntimeError(f"Unknown model config '{name}'.{hint} (open_clip.list_models() lists all; "
                        f"open_clip_ext.register_variant(base, 'rope', N) derives new ones.)")


def base_config(base) -> dict:
    if isinstance(base, dict):
        return deepcopy(base)
    cfg = open_clip.get_model_config(base)
    if cfg is None:
        raise unknown_model_error(base)
    return cfg


def derive_config(base, position: str = "rope", context_length: int = 248, **position_options) -> dict:
    """The config of ``base`` (a registered name or a config dict) with a RoPE/CoPE/Long-CLIP/uniform text tower."""
    if position not in POSITION_TYPES:
        raise ValueError(f"position must be one of {POSITION_TYPES}, got {position!r}")
    unknown = set(position_options) - set(POSITION_DEFAULTS[position])
    if unknown:
        raise ValueError(f"unknown {position} option(s) {sorted(unknown)}; valid: {sorted(POSITION_DEFAULTS[position])}")
    cfg = base_config(base)
    text_cfg = cfg["text_cfg"]
    for key, stock_value in _UNSUPPORTED_TEXT.items():
        if text_cfg.get(key, stock_value) != stock_value:
            raise ValueError(f"base config has text_cfg.{key}={text_cfg[key]!r}: only standard CLIP text towers "
                             f"can take relative positions")
    if text_cfg.get("pool_type", "argmax") not in ("argmax", "eos", "last"):
        raise ValueError(f"base text pool_type {text_cfg['pool_type']!r} is not supported")
    if context_length < 2:
        raise ValueError(f"context_length must be at least 2, got {context_length}")
    if position in CUSTOM_TEXT_POSITION_TYPES:
        cfg["custom_text"] = True
    text_cfg["context_length"] = int(context_length)
    text_cfg["pos_embed_type"] = position
    text_cfg.update({**POSITION_DEFAULTS[position], **position_options})
    return cfg


def tower_quick_gelu(cfg: dict, tower_key: str) -> bool:
    """Whether the tower ``tower_key`` ("vision_cfg" or "text_cfg") of model config ``cfg`` computes with
    QuickGELU: the tower's own ``quick_gelu`` if it has one, else the model-level ``quick_gelu`` (default False)."""
    own = (cfg.get(tower_key) or {}).get(TOWER_ACTIVATION_KEY)
    return bool(cfg.get("quick_gelu", False) if own is None else own)


def gelu_pinned_towers(cfg: dict):
    """The tower config keys of ``cfg`` whose own ``quick_gelu`` is False (the model-level flag cannot change them)."""
    return [key for key in TOWER_CONFIG_KEYS if (cfg.get(key) or {}).get(TOWER_ACTIVATION_KEY) is False]


def split_tower_activation(tower_cfg, model_quick_gelu: bool):
    """(tower config without its ``quick_gelu`` key, the QuickGELU flag the tower is built with).

    ``tower_cfg`` is a dict or an open_clip ``CLIPVisionCfg`` / ``CLIPTextCfg`` (which cannot hold the key and is
    returned unchanged); the dict passed in is not modified."""
    if not isinstance(tower_cfg, dict) or TOWER_ACTIVATION_KEY not in tower_cfg:
        return tower_cfg, bool(model_quick_gelu)
    tower_cfg = dict(tower_cfg)
    own = tower_cfg.pop(TOWER_ACTIVATION_KEY)
    return tower_cfg, bool(model_quick_gelu if own is None else own)


def with_tower_activations(cfg: dict, vision_quick_gelu: bool, text_quick_gelu: bool) -> dict:
    """A copy of ``cfg`` whose towers each name their activation (the model-level ``quick_gelu`` is dropped:
    it would no longer decide anything)."""
    cfg = deepcopy(cfg)
    cfg.pop("quick_gelu", None)
    cfg["vision_cfg"][TOWER_ACTIVATION_KEY] = bool(vision_quick_gelu)
    cfg["text_cfg"][TOWER_ACTIVATION_KEY] = bool(text_quick_gelu)
    return cfg


def tulip_release_config(base, position: str, context_length: int = 248, eval_script: bool = False) -> dict:
    """The config of TULIP's released weights for ``base`` (a registered name or config dict).

    As trained (default): QuickGELU image tower (stage 2 loaded the CLIP through open_clip's OpenAI loader),
    GELU text tower (TULIP's RoPE/CoPE student classes default to ``nn.GELU``), TULIP's CoPE choices, RoPE theta
    10000 without NTK rescaling (what eval_tulip.py runs). ``eval_script=True``: GELU image tower too, as
    eval_tulip.py computes when its ``--pretrained`` is a checkpoint file (it builds the image tower from the
    stock config, whose activation is GELU, and loads the released image weights into it).
    Source: github.com/ivonajdenkoska/tulip @ 132c174f, open_clip/training/main_context_finetune_rope.py and
    eval_tulip.py; docs/checkpoints.md."""
    cfg = derive_config(base, position, context_length)
    return with_tower_activations(cfg, vision_quick_gelu=not eval_script, text_quick_gelu=False)


def variant_name(base_name: str, position: str, context_length: int) -> str:
    return f"{base_name}-{position}-{context_length}"


def split_variant_name(name: str):
    """'ViT-L-14-rope-248' -> ('ViT-L-14', 'rope', 248); None for a name that is not a variant."""
    match = _VARIANT_NAME.match(name)
    if not match:
        return None
    return match["base"], match["position"], int(match["context"])


def register_model_config(name: str, cfg: dict) -> None:
    """Add a config dict under ``name`` to open_clip's registry (a later rescan keeps it)."""
    open_clip.factory._MODEL_CONFIGS[name] = deepcopy(cfg)


def alias_pretrained_tags(name: str, base_name: str) -> None:
    """Let ``create_model(name, pretrained=<tag of base>)`` find the base's weights."""
    tags = open_clip.pretrained._PRETRAINED.get(base_name)
    if tags and name not in open_clip.pretrained._PRETRAINED:
        open_clip.pretrained._PRETRAINED[name] = tags


def register_variant(base_name: str, position: str = "rope", context_length: int = 248,
                     name: Optional[str] = None, **position_options) -> str:
    """Derive and register a variant of a stock config; its pretrained tags are the base's.

    >>> name = register_variant('ViT-B-16', 'rope', 512)   # 'ViT-B-16-rope-512'
    >>> model = open_clip.create_model(name, pretrained='openai')
    """
    cfg = derive_config(base_name, position, context_length, **position_options)
    name = name or variant_name(base_name, position, context_length)
    register_model_config(name, cfg)
    alias_pretrained_tags(name, base_name)
    return name


def register_shipped_configs() -> None:
    """Register model_configs/*.json and give each `<base>-<position type>-<N>` its base's pretrained tags."""
    config_dir = shipped_config_dir()
    open_clip.add_model_config(config_dir)
    for path in sorted(config_dir.glob("*.json")):
        parsed = split_variant_name(path.stem)
        if parsed:
            alias_pretrained_tags(path.stem, parsed[0])
