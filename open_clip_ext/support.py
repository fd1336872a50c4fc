"""Which open_clip configs take which text-tower kinds, read from each config's JSON alone (no model is built).

Every name ``open_clip.list_models()`` gives is either a base (each kind of ``configs.POSITION_TYPES`` is supported
or refused, with ``configs.text_tower_refusal``'s reason: the one ``derive_config`` and the tower builders give)
or a variant this package ships (``pos_embed_type`` set). ``markdown_table()`` groups them by family into the
README's support table (``scripts/support_table.py`` prints it; tests/open_clip_ext/test_support_table.py checks
the README against it and builds a shrunk representative of every supported family).

A Hugging Face text tower (XLM-R, RoBERTa, mT5, NLLB) takes only "context" (its own positions, longer context);
every other tower is refused "context" for the same reason, which the table leaves out (``CONTEXT_NEEDS_HF``).

Columns: stage 1 distils into relative positions only (training_ext.stages.flags.POSITIONS); stage 2 fine-tunes
any long-context kind, a context variant included; training_ext.eval evaluates any open_clip model, a refused base
as its stock self;
``python -m open_clip_ext.export transformers`` writes a RoPE/CoPE text tower with its own code and the image
tower as ``CLIPVisionModel`` when it is open_clip's plain ViT (Long-CLIP / uniform need that image tower too:
they export as one ``CLIPModel``); ``open-clip`` / ``push`` (open_clip's own layout) take every model.
"""
import re
from pathlib import Path
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

import open_clip
import open_clip.factory

from .configs import CONTEXT_NEEDS_HF, POSITION_TYPES, RELATIVE_POSITION_TYPES, text_tower_refusal

STAGE1_KINDS = RELATIVE_POSITION_TYPES
# (family, pattern on the config name): first match wins; a name no pattern matches is its own family (its first
# name segment), so a family open_clip adds later still gets a row.
FAMILIES = (
    ("CoCa", r"^coca_"),
    ("MobileCLIP2", r"^MobileCLIP2-"),
    ("MobileCLIP", r"^MobileCLIP-"),
    ("SigLIP2", r"SigLIP2"),
    ("SigLIP", r"SigLIP"),
    ("CLIPA", r"-CLIPA"),
    ("MetaCLIP 2 (worldwide)", r"-worldwide"),
    ("NLLB-CLIP", r"^nllb-clip"),
    ("Hugging Face text (mT5, RoBERTa, XLM-R)", r"^(mt5|roberta|xlm-roberta)-"),
    ("EVA", r"^EVA0"),
    ("PE-Core", r"^PE-Core-"),
    ("ViTamin", r"^ViTamin-"),
    ("ConvNeXt", r"^convnext_"),
    ("ResNet (OpenAI)", r"^RN\d"),
    ("timm image towers", r"^(swin|vit)_"),
    ("this package: TULIP releases", r"^TULIP-"),
    ("this package: Long-CLIP releases", r"^LongCLIP-"),
    ("tiny-clip (tests, demo)", r"^tiny-clip"),
    ("CLIP ViT (OpenAI, LAION, DFN, MetaCLIP)", r"^ViT-"),
)
CLIP_BPE = "CLIP BPE"


@dataclass
class ConfigSupport:
    """What a config supports. ``kinds``: kinds a ``<name>-<kind>-<N>`` variant can be derived with;
    ``refusals``: kind -> reason for the others; ``variant``: the kind of a config that already is one."""
    name: str
    family: str
    kinds: Tuple[str, ...] = ()
    refusals: Dict[str, str] = field(default_factory=dict)
    variant: Optional[str] = None
    tokenizer: str = CLIP_BPE
    pooling: str = "argmax"
    image_tower: str = "ViT"
    image_exportable: bool = False
    bidirectional: bool = False
    logit_bias: bool = False  # init_logit_bias set: a SigLIP-family model, trained with the sigmoid loss


def family_of(name: str) -> str:
    for family, pattern in FAMILIES:
        if re.search(pattern, name):
            return family
    return re.split(r"[-_]", name)[0]


def image_tower(vision_cfg: dict) -> Tuple[str, bool]:
    """(kind of image tower, whether transformers' CLIPVisionModel can hold it), from ``vision_cfg``: what
    open_clip_ext.export.transformers_clip._check_vision refuses on the built tower."""
    if vision_cfg.get("timm_model_name"):
        return f"timm ({vision_cfg['timm_model_name']})", False
    if isinstance(vision_cfg.get("layers"), (list, tuple)):
        return "ResNet", False
    square = all(not isinstance(vision_cfg.get(key), (list, tuple)) or len(set(vision_cfg[key])) == 1
                 for key in ("image_size", "patch_size"))
    plain = (not vision_cfg.get("attentional_pool") and vision_cfg.get("pool_type", "tok") == "tok"
             and not vision_cfg.get("no_ln_pre"))
    return "ViT", square and plain


def classify(name: str, cfg: Optional[dict] = None) -> ConfigSupport:
    """The support of registered config ``name`` (or of ``cfg`` under that name), from the config alone."""
    cfg = cfg if cfg is not None else open_clip.get_model_config(name)
    text_cfg = cfg.get("text_cfg") or {}
    tower, exportable = image_tower(cfg.get("vision_cfg") or {})
    support = ConfigSupport(name=name, family=family_of(name), tokenizer=text_cfg.get("hf_tokenizer_name") or
                            (text_cfg.get("hf_model_name") and f"HF {text_cfg['hf_model_name']}") or CLIP_BPE,
                            pooling=text_cfg.get("pool_type") or text_cfg.get("hf_pooler_type") or "argmax",
                            image_tower=tower, image_exportable=exportable,
                            bidirectional=bool(text_cfg.get("no_causal_mask")),
                            logit_bias=cfg.get("init_logit_bias") is not None)
    if text_cfg.get("pos_embed_type"):
        support.variant = text_cfg["pos_embed_type"]
        return support
    refusals = {kind: text_tower_refusal(cfg, kind) for kind in POSITION_TYPES}
    support.kinds = tuple(kind for kind, reason in refusals.items() if reason is None)
    support.refusals = {kind: reason for kind, reason in refusals.items() if reason is not None}
    return support


def shipped_config_names() -> List[str]:
    """The configs open_clip and this package ship as files, in ``list_models()`` order: what ``list_models()``
    holds right after import, before variants registered at run time (by name or ``register_variant``)."""
    files = set()
    for path in map(Path, open_clip.factory._MODEL_CONFIG_PATHS):
        files.update(p.stem for p in (path.glob("*.json") if path.is_dir() else [path]))
    return [name for name in open_clip.list_models() if name in files]


def classify_all(names: Optional[Iterable[str]] = None) -> List[ConfigSupport]:
    """``classify`` of each of ``names`` (default: ``shipped_config_names()``)."""
    return [classify(name) for name in (shipped_config_names() if names is None else names)]


def _status(support: ConfigSupport) -> str:
    if support.variant:
        return f"ships {support.variant} variants"
    # "context" is offered to Hugging Face text towers only: the table names it where it is, not everywhere else
    shown = {kind: reason for kind, reason in support.refusals.items() if reason != CONTEXT_NEEDS_HF}
    if not support.kinds:
        reasons = sorted(set(shown.values()))
        return "refused: " + "; ".join(reasons)
    by_reason: Dict[str, List[str]] = {}
    for kind, reason in shown.items():
        by_reason.setdefault(reason, []).append(kind)
    refused = "".join(f"; {', '.join(kinds)} refused: {reason}" for reason, kinds in sorted(
        by_reason.items(), key=lambda item: sorted(item[1])))
    return ", ".join(support.kinds) + refused


def _listing(values: List[str], most: int = 3) -> str:
    values = list(dict.fromkeys(values))
    shown = ", ".join(f"`{v}`" for v in values[:most])
    return shown + (f" +{len(values) - most} more" if len(values) > most else "")


def _columns(support: ConfigSupport) -> Tuple[str, str, str, str]:
    """(stage 1, stage 2, eval, export) cells of a row."""
    kinds = (support.variant,) if support.variant else support.kinds
    stage1 = ", ".join(k for k in kinds if k in STAGE1_KINDS) or "—"
    stage2 = ", ".join(kinds) or "—"
    if support.bidirectional and support.kinds:
        # both stages and eval run a tiny SigLIP 2-like tower end to end (tests/training_ext/stages/
        # test_bidirectional_stages.py); stage 2's loss is the base's own: sigmoid where the model has a logit bias
        # (--siglip), else softmax (CLIPA, MobileCLIP-S were trained with it)
        stage2 += (" (--siglip: the base's sigmoid loss)" if support.logit_bias
                   else " (softmax CLIP loss, the base's own)")
    evaluate = "variants and stock" if support.kinds else ("yes" if support.variant else "stock only")
    # CLIPModel (Long-CLIP / uniform) needs the image tower and CLIP's end token; the RoPE/CoPE code neither; both
    # attend causally (a bidirectional tower is refused by the exporters)
    exported = [] if support.bidirectional else [
        k for k in kinds
        if k in RELATIVE_POSITION_TYPES or (support.image_exportable and support.tokenizer == CLIP_BPE)]
    export = ("transformers: " + ", ".join(exported)) if exported else "open_clip layout only"
    if exported and not support.image_exportable:
        export += " (text tower only: --no-vision)"
    if exported and support.tokenizer != CLIP_BPE:
        export += " (--no-tokenizer)"
    return stage1, stage2, evaluate, export


def family_rows(supports: Optional[List[ConfigSupport]] = None) -> List[List[str]]:
    """One row per (family, support): configs, kinds (or the refusal), tokenizer, pooling, stage 1, stage 2,
    eval, export. Rows keep open_clip.list_models()'s order of their first config."""
    groups: Dict[Tuple, List[ConfigSupport]] = {}
    for support in classify_all() if supports is None else supports:
        key = (support.family, _status(support), *_columns(support))
        groups.setdefault(key, []).append(support)
    rows = []
    for (family, status, *cells), members in sorted(groups.items(), key=lambda item: item[0][:2]):
        tokenizers = _listing([m.tokenizer for m in members], most=2).replace("`", "")
        pooling = ", ".join(dict.fromkeys(m.pooling for m in members))
        rows.append([family, _listing([m.name for m in members]) + f" ({len(members)})", status, tokenizers,
                     pooling, *cells])
    return rows


HEADER = ["family", "configs", "kinds", "tokenizer", "pooling", "stage 1", "stage 2", "eval", "export"]


def markdown_table(supports: Optional[List[ConfigSupport]] = None) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in family_rows(supports)]
    return "\n".join(lines) + "\n"
