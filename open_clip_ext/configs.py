"""Model configs: the JSONs shipped in model_configs/ and the derivation of a variant from any stock config.

A relative-position variant is the stock config with three changes: ``custom_text: true`` (the tower has no
``positional_embedding`` for ``CLIP.__init__`` to copy), ``text_cfg.pos_embed_type`` in {"rope", "cope"} and the
new ``text_cfg.context_length``. Everything else (widths, activation, vision tower) stays the base's, which is
what lets the base's pretrained weights initialise the variant. Any registered base takes any kind at any length
from its own context up by name alone: ``<base>-<kind>-<N>`` is derived and registered on its first lookup
(``derive_on_demand``, called from open_clip's ``get_model_config`` as patches.py wraps it); a base whose text
tower a kind cannot reproduce is refused with ``text_tower_refusal``'s reason (support.py tabulates them).

Two absolute-position variants are derived the same way, for comparison: "longclip" (Long-CLIP's stretched
table with frozen leading rows, see longclip.py; custom text tower) and "uniform" (a stock CLIP whose 77 learned
positions open_clip itself resizes uniformly on load, i.e. ``force_context_length``; stock CLIP class).

A Hugging Face text tower (``text_cfg.hf_model_name``: XLM-R, RoBERTa, mT5, NLLB) keeps its own positions, which
already reach past the 77 tokens open_clip's configs tokenize: its one kind is "context" (``<base>-context-<N>``),
the base config with only ``text_cfg.context_length`` (the tokenizer's length) raised to N and every weight the
base's. N may not exceed what the transformers config's positions reach (``hf_context_limit``).

Activation per tower: open_clip has one model-level ``quick_gelu`` for both towers. A tower config may carry its
own ``quick_gelu`` (``vision_cfg.quick_gelu``, ``text_cfg.quick_gelu``), which wins over the model-level flag for
that tower; patches.py strips the key before open_clip's tower configs (which reject unknown keys) see it.
TULIP's released weights need it: its stage 2 built the CLIP with open_clip's OpenAI loader (QuickGELU) and
swapped in a GELU RoPE/CoPE student (github.com/ivonajdenkoska/tulip @ 132c174f,
open_clip/training/main_context_finetune_rope.py), so they hold a QuickGELU image tower and a GELU text tower.
"""
import difflib
import functools
import re
from copy import deepcopy
from pathlib import Path
from typing import Optional, Tuple

import open_clip
import open_clip.factory
import open_clip.pretrained
from open_clip.model import CLIPTextCfg

RELATIVE_POSITION_TYPES = ("rope", "cope")
# Raises only the context of a tower whose own positions reach further (Hugging Face text towers): nothing new.
CONTEXT_ONLY = "context"
POSITION_TYPES = RELATIVE_POSITION_TYPES + ("longclip", "uniform", CONTEXT_ONLY)
# Towers open_clip's CLIP class cannot host (it copies one ``positional_embedding`` parameter from the tower).
CUSTOM_TEXT_POSITION_TYPES = ("rope", "cope", "longclip")
# Text-config keys this package adds to open_clip's CLIPTextCfg, with their defaults.
POSITION_DEFAULTS = {
    "rope": {"rope_theta": 10000.0, "rope_ntk_factor": None, "rope_ntk_trained_length": 77},
    "cope": {"cope_qk_norm": True, "cope_scale": "tulip"},
    "longclip": {"longclip_keep_positions": 20},
    "uniform": {},
    CONTEXT_ONLY: {},
}
EXT_TEXT_KEYS = {"pos_embed_type"} | {k for d in POSITION_DEFAULTS.values() for k in d}
# Per-tower activation key (in vision_cfg / text_cfg), named like open_clip's model-level flag.
TOWER_ACTIVATION_KEY = "quick_gelu"
TOWER_CONFIG_KEYS = ("vision_cfg", "text_cfg")
# TULIP's released checkpoints evaluated the way its eval_tulip.py run with --pretrained=<file> does (GELU image
# tower): docs/checkpoints.md.
TULIP_EVAL_SCRIPT_SUFFIX = "-evalscript"
_VARIANT_NAME = re.compile(rf"^(?P<base>.+)-(?P<position>{'|'.join(POSITION_TYPES)})-(?P<context>\d+)$")
# Stock text-tower options no derived tower reproduces: (stock value, why the base is refused).
_UNSUPPORTED_TEXT = {
    "hf_model_name": (None, "Hugging Face text tower (text_cfg.hf_model_name): its positions are the HF model's "
                            f"(use {CONTEXT_ONLY})"),
    "embed_cls": (False, "class-token text tower (text_cfg.embed_cls)"),
    "cls_emb": (None, "class-token text tower (text_cfg.cls_emb)"),
}
# CoPE's position of key j for a query is the count of gated tokens between them in the causal past; without the
# mask there is no such count (a key after the query lies nowhere on that scale), and neither the CoPE paper nor
# TULIP defines a two-sided one or has weights for it.
_COPE_BIDIRECTIONAL = ("CoPE is causal only (its positions count gated tokens before the query) and this text "
                       "tower is bidirectional (text_cfg.no_causal_mask); use rope, longclip or uniform")
# Model-level keys of configs whose text tower open_clip builds inside another model class.
_UNSUPPORTED_MODEL = {"multimodal_cfg": "CoCa (captioning decoder on the text tower; multimodal_cfg): the decoder's "
                                          "causal mask is sized to the base's context (multimodal_cfg.context_length) "
                                          "and no stage here trains its captioning loss"}
CONTEXT_NEEDS_HF = (f"{CONTEXT_ONLY} raises the context within a Hugging Face text tower's own positions "
                     "(text_cfg.hf_model_name); this tower's positions end at its context (use rope, cope, longclip "
                     "or uniform)")
# transformers model types open_clip's HFTextEncoder builds (open_clip.hf_configs.arch_dict), by position layout
# (transformers' modeling code): RoBERTa's learned rows start after pad_token_id (create_position_ids_from_input_ids);
# BERT's at 0; M2M100's (NLLB) sinusoids start after pad_token_id in a table of max_position_embeddings + 2 rows;
# T5's are relative buckets with no table.
_HF_PAD_OFFSET_POSITIONS = ("roberta", "xlm-roberta")
_HF_ABSOLUTE_POSITIONS = ("bert", "m2m_100")
_HF_RELATIVE_BUCKETS = ("t5", "mt5")
POOL_TYPES = ("argmax", "eos", "last")
_NOT_A_STOCK_KEY = object()
# Stock text keys the relative-position tower honours; any other non-default stock key refuses rope/cope.
RELPOS_HONOURED = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio", "ls_init_value",
                   "pool_type", "eos_id", "no_causal_mask", "proj_bias", "output_tokens", "act_kwargs",
                   "norm_kwargs", "pad_id", "hf_tokenizer_name", "tokenizer_mode", "tokenizer_kwargs", "proj_type"}
# Loose `<base>-<word>-<digits>`: tells a misspelt kind ('ViT-B-16-rop-248') from an unknown name.
_LOOSE_VARIANT_NAME = re.compile(r"^(?P<base>.+)-(?P<position>[A-Za-z]+)-(?P<context>\d+)$")


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


def text_tower_refusal(cfg: dict, position: str) -> Optional[str]:
    """Why the model config ``cfg``'s text tower cannot be built with ``position`` positions; None if it can.

    Read from the config alone (no model is built). ``derive_config`` refuses a base with this reason and the
    tower builders (towers.py) refuse a config with the same reason, so support.py's table and the builders agree.
    """
    for key, reason in _UNSUPPORTED_MODEL.items():
        if cfg.get(key):
            return reason
    text_cfg = cfg.get("text_cfg") or {}
    if position == CONTEXT_ONLY:
        return None if text_cfg.get("hf_model_name") else CONTEXT_NEEDS_HF
    for key, (stock_value, reason) in _UNSUPPORTED_TEXT.items():
        if text_cfg.get(key, stock_value) != stock_value:
            return reason
    if text_cfg.get("no_causal_mask") and position == "cope":
        return _COPE_BIDIRECTIONAL
    if text_cfg.get("pool_type", "argmax") not in POOL_TYPES:
        return f"text pool_type {text_cfg['pool_type']!r} (supported: {', '.join(POOL_TYPES)})"
    if position in RELATIVE_POSITION_TYPES:
        defaults = CLIPTextCfg()
        ignored = sorted(k for k in text_cfg if k not in EXT_TEXT_KEYS | RELPOS_HONOURED | {TOWER_ACTIVATION_KEY}
                         and text_cfg[k] != getattr(defaults, k, _NOT_A_STOCK_KEY))
        if ignored:
            return f"text_cfg options {ignored} are not supported by the relative-position text tower"
    return None


@functools.lru_cache(maxsize=None)
def _hf_text_config(hf_model_name: str):
    """(transformers config, None) or (None, why it cannot be read): a failure is cached too, since a name that
    misses the hub is looked up twice per refused name (derive, then the reason) and each miss retries for ~30 s."""
    try:
        import transformers  # optional (the hf extra); open_clip's HF text tower needs it too
    except ImportError:
        return None, f"text_cfg.hf_model_name '{hf_model_name}' needs transformers: pip install 'open_clip_ext[hf]'"
    try:
        return transformers.AutoConfig.from_pretrained(hf_model_name), None
    except (OSError, ValueError) as error:
        return None, (f"cannot read the transformers config of text_cfg.hf_model_name '{hf_model_name}' (its "
                      f"positions decide the longest context): {str(error).splitlines()[0].rstrip('.')}")


def hf_context_limit(hf_model_name: str) -> Tuple[Optional[int], str]:
    """(longest context the Hugging Face text tower ``hf_model_name`` reads with its own positions, None for no
    limit; how that follows from its transformers config), from ``AutoConfig.from_pretrained(hf_model_name)`` (a
    local folder, the Hugging Face cache, or the hub; read once per name for the process).

    Raises:
        ValueError: the config cannot be read, or its model type is one open_clip's HFTextEncoder does not build."""
    config, problem = _hf_text_config(hf_model_name)
    if problem:
        raise ValueError(problem)
    kind = config.model_type
    if kind in _HF_RELATIVE_BUCKETS:
        # the buckets are shared past relative_attention_max_distance already at mT5's own 1024-token pre-training
        return None, (f"{kind} relative position buckets: no limit; distances of "
                      f"{config.relative_attention_max_distance} tokens or more share the farthest bucket")
    rows = getattr(config, "max_position_embeddings", None)
    if kind in _HF_PAD_OFFSET_POSITIONS and rows:
        return rows - config.pad_token_id - 1, (
            f"{kind} has {rows} position rows (max_position_embeddings), the first {config.pad_token_id + 1} "
            f"before its first token (positions start after pad_token_id {config.pad_token_id})")
    if kind in _HF_ABSOLUTE_POSITIONS and rows:
        return rows, f"{kind} has {rows} positions (max_position_embeddings)"
    known = _HF_PAD_OFFSET_POSITIONS + _HF_ABSOLUTE_POSITIONS + _HF_RELATIVE_BUCKETS
    raise ValueError(f"text_cfg.hf_model_name '{hf_model_name}' is a {kind!r} model: open_clip's HF text tower "
                     f"builds {', '.join(known)}")


def _check_hf_context(label: str, text_cfg: dict, context_length: int) -> None:
    limit, layout = hf_context_limit(text_cfg["hf_model_name"])
    if limit is not None and context_length > limit:
        raise ValueError(f"{label} cannot read {context_length} tokens with {CONTEXT_ONLY} positions: its Hugging "
                         f"Face text tower {text_cfg['hf_model_name']} reads at most {limit} ({layout}); ask for "
                         f"{limit} tokens or fewer")


def _close(name: str, names, n: int = 8) -> str:
    close = difflib.get_close_matches(name, list(names), n=n, cutoff=0.6)
    return f" Close matches: {', '.join(close)}." if close else ""


def unknown_model_reason(name: str) -> str:
    """Why ``name`` names no config, with the close names: a refused or misspelt ``<base>-<kind>-<N>`` says which
    part is at fault (the base, the kind, or what the base's text tower cannot take)."""
    parsed = split_variant_name(name)
    if parsed and open_clip.get_model_config(parsed[0]) is not None:
        try:
            derive_config(*parsed)
        except ValueError as refusal:
            return f"Cannot derive '{name}': {refusal}.{_close(name, open_clip.list_models())}"
    loose = _LOOSE_VARIANT_NAME.match(name)
    if loose:
        base, position = loose["base"], loose["position"]
        kinds = difflib.get_close_matches(position, POSITION_TYPES, n=2, cutoff=0.6)
        if parsed is None and kinds:
            names = [name[:loose.start("position")] + kind + name[loose.end("position"):] for kind in kinds]
            return (f"Unknown model config '{name}': '{position}' is not a variant kind (kinds: "
                    f"{', '.join(POSITION_TYPES)}). Did you mean: {', '.join(names)}?")
        if parsed and open_clip.get_model_config(base) is None:
            bases = [n for n in open_clip.list_models() if split_variant_name(n) is None]
            return (f"Unknown model config '{name}': no base config '{base}' for a {position} variant."
                    f"{_close(base, bases)} (open_clip.list_models() lists all.)")
    return (f"Unknown model config '{name}'.{_close(name, open_clip.list_models())} (open_clip.list_models() lists "
            f"all; '<base>-<kind>-<N>' with kind one of {', '.join(POSITION_TYPES)} derives a variant of any base.)")


def unknown_model_error(name: str) -> RuntimeError:
    return RuntimeError(unknown_model_reason(name))


def model_name_problem(name: str) -> Optional[str]:
    """None if ``create_model(name)`` finds a config (a ``<base>-<kind>-<N>`` variant is derived and registered
    now; hf-hub: / local-dir: names are not looked up), else ``unknown_model_reason(name)``."""
    if open_clip.factory.parse_model_name(name)[0] is not None:
        return None
    if open_clip.get_model_config(name.replace("/", "-")) is not None:
        return None
    return unknown_model_reason(name)


def base_config(base) -> dict:
    if isinstance(base, dict):
        return deepcopy(base)
    cfg = open_clip.get_model_config(base)
    if cfg is None:
        raise unknown_model_error(base)
    return cfg


def derive_config(base, position: str = "rope", context_length: int = 248, **position_options) -> dict:
    """The config of ``base`` (a registered name or a config dict) with a RoPE/CoPE/Long-CLIP/uniform text tower,
    or, for a Hugging Face text tower, ``position="context"``: only ``text_cfg.context_length`` raised.

    Raises:
        RuntimeError: ``base`` names no config (the message lists close names).
        ValueError: an unknown position type or option, a base that already is a variant, a text tower the
            position type cannot reproduce (``text_tower_refusal``), a context shorter than the base's, or (context)
            longer than the Hugging Face tower's positions reach (``hf_context_limit``, which reads its config)."""
    if position not in POSITION_TYPES:
        raise ValueError(f"position must be one of {POSITION_TYPES}, got {position!r}")
    unknown = set(position_options) - set(POSITION_DEFAULTS[position])
    if unknown:
        raise ValueError(f"unknown {position} option(s) {sorted(unknown)}; valid: {sorted(POSITION_DEFAULTS[position])}")
    cfg = base_config(base)
    text_cfg = cfg["text_cfg"]
    label = base if isinstance(base, str) else "the base"
    if is_ext_text_cfg(text_cfg):
        raise ValueError(f"{label} is already a {text_cfg['pos_embed_type']} variant; derive from its base")
    refusal = text_tower_refusal(cfg, position)
    if refusal:
        raise ValueError(f"{label} cannot take {position} positions: {refusal}")
    base_context = text_cfg.get("context_length", open_clip.factory.DEFAULT_CONTEXT_LENGTH)
    if context_length < base_context:
        raise ValueError(f"context_length {context_length} is shorter than {label}'s {base_context}: a variant "
                         f"reads at least the base's context")
    if position == CONTEXT_ONLY:
        _check_hf_context(label, text_cfg, context_length)
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


def derive_on_demand(name: str) -> Optional[dict]:
    """The config of ``<base>-<kind>-<N>`` for a registered base, registered now (with the base's pretrained
    tags) so every command that resolves model names through open_clip knows it; None if ``name`` is not such a
    name or the base cannot take the kind (``unknown_model_reason`` says why)."""
    parsed = split_variant_name(name)
    if parsed is None or open_clip.get_model_config(parsed[0]) is None:
        return None
    try:
        register_variant(*parsed)
    except ValueError:
        return None
    return deepcopy(open_clip.factory._MODEL_CONFIGS[name])


def register_shipped_configs() -> None:
    """Register model_configs/*.json and give each `<base>-<position type>-<N>` its base's pretrained tags."""
    config_dir = shipped_config_dir()
    open_clip.add_model_config(config_dir)
    for path in sorted(config_dir.glob("*.json")):
        parsed = split_variant_name(path.stem)
        if parsed:
            alias_pretrained_tags(path.stem, parsed[0])
