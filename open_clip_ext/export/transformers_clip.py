"""open_clip CLIP models with absolute text positions <-> transformers ``CLIPModel`` directories.

Export covers stock 77-token CLIP, the Long-CLIP family and uniform interpolation (``*-uniform-248``): every text
tower that adds one learned (context, width) table to its token embeddings. transformers' CLIP has one
``position_embedding`` table; Long-CLIP's two tables are merged into the one its tower actually adds (rows below
``keep_positions`` from ``positional_embedding``, the rest from ``positional_embedding_res``). The directory holds
config.json, model.safetensors, a CLIPTokenizer made from open_clip's BPE file and a CLIPImageProcessor with the
model's mean/std, so ``CLIPModel``, ``CLIPTextModel(WithProjection)``, ``CLIPVisionModel(WithProjection)`` and
``CLIPProcessor`` all load it with ``from_pretrained``.

Import reads such a directory back into an open_clip ``CLIP`` and warns when its text positions look like the
wild-conversion bug (``UnfinetunedPositionsWarning``).
"""
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Dict, Tuple

import torch
from torch import nn
from open_clip.model import CLIP, get_model_preprocess_cfg
from open_clip.transform import PreprocessCfg
from open_clip.transformer import QuickGELU, TextTransformer, VisionTransformer

from ..configs import with_tower_activations
from ..convert import to_custom_text_layout
from ..longclip import LONGCLIP_KEEP_POSITIONS, LongCLIPTextTransformer, stretch_positions
from ..text_tower import RelPosTextTransformer
from .clip_layout import hf_to_open_clip, open_clip_to_hf
from .tokenizer import EOT, clip_tokenizer, write_vocab_files

STOCK_CONTEXT = 77
OPEN_CLIP_VOCAB = 49408
# transformers' CLIP is CLIP's BPE vocabulary by construction, so its end id is fixed: <|endoftext|>, the last id
# (<|startoftext|> the one before). Towers of another vocabulary (MetaCLIP 2's XLM-V / mT5) are refused.
CLIP_EOT_ID = OPEN_CLIP_VOCAB - 1
# transformers activation names (transformers.activations.ACT2FN) for the activations CLIP towers use
_GELU_NAMES = {"none": "gelu", "tanh": "gelu_pytorch_tanh"}


class ExportError(ValueError):
    """A model or directory that cannot be converted as asked; the message names the part and the fix."""


class UnfinetunedPositionsWarning(UserWarning):
    """Text positions past Long-CLIP's kept rows are an exact stretch of 77 rows: never fine-tuned."""


def hf_activation(tower: nn.Module, where: str) -> str:
    """transformers' ``hidden_act`` for the activation the tower's blocks use (QuickGELU or GELU), read from the
    built modules rather than a model-level flag (the two towers may differ).

    Raises:
        ExportError: no activation found, several kinds, or one transformers' CLIP has no name for.
    """
    found = set()
    for module in tower.modules():
        if isinstance(module, QuickGELU):
            found.add("quick_gelu")
        elif isinstance(module, nn.GELU):
            if module.approximate not in _GELU_NAMES:
                raise ExportError(f"{where}: GELU(approximate={module.approximate!r}) has no transformers name")
            found.add(_GELU_NAMES[module.approximate])
    if len(found) != 1:
        raise ExportError(f"{where}: expected one activation (QuickGELU or GELU) in every block, found "
                          f"{sorted(found) or 'none'}")
    return found.pop()


def layer_norm_eps(tower: nn.Module, where: str) -> float:
    """The one epsilon of the tower's LayerNorms (transformers' CLIP has a single ``layer_norm_eps`` per tower)."""
    eps = {module.eps for module in tower.modules() if isinstance(module, nn.LayerNorm)}
    if len(eps) != 1:
        raise ExportError(f"{where}: LayerNorms with epsilons {sorted(eps)}; transformers' CLIP takes one per tower")
    return eps.pop()


def text_position_table(model) -> torch.Tensor:
    """(context_length, width) positions the text tower adds to its token embeddings (Long-CLIP: merged).

    Raises:
        ExportError: a relative-position tower (it has no table; use ``relpos_hf.export_relpos_text_model``).
    """
    text = getattr(model, "text", None)
    if isinstance(text, RelPosTextTransformer):
        raise ExportError(f"the text tower uses {text.position} positions, which transformers' CLIPModel cannot "
                          f"express; export it with open_clip_ext.export.export_relpos_text_model (custom code)")
    if isinstance(text, LongCLIPTextTransformer):
        return text.position_table().detach()
    if isinstance(text, TextTransformer):
        return text.positional_embedding.detach()
    if text is None and isinstance(model, CLIP):
        return model.positional_embedding.detach()
    raise ExportError(f"text tower {type(text).__name__} is not a CLIP text transformer with learned positions")


def text_parts(model) -> Tuple[nn.Module, nn.Module]:
    """(tower, blocks): the module holding the text tower's token_embedding / ln_final / text_projection / pooling
    settings, and its stack of blocks. In open_clip's stock ``CLIP`` class both live on the model itself."""
    text = getattr(model, "text", None)
    if text is None:
        return model, model.transformer
    return text, text.transformer


def _check_text(model) -> None:
    """Refuse text-tower options transformers' CLIPTextModel does not compute (it pools at the first EOS id and
    attends causally, with pre-norm blocks and no class token)."""
    tower, _ = text_parts(model)
    pool_type = getattr(tower, "pool_type", getattr(model, "text_pool_type", "argmax"))
    eos_id = getattr(tower, "eos_id", getattr(model, "text_eos_id", None))
    # argmax pooling reads the largest id, which is <|endoftext|> in CLIP's vocabulary (eos_id is unused then)
    if pool_type not in ("argmax", "eos") or (pool_type == "eos" and eos_id != CLIP_EOT_ID):
        raise ExportError(f"text pool_type={pool_type!r} (eos_id {eos_id}): transformers' CLIP pools at the first "
                          f"<|endoftext|> of CLIP's vocabulary ({CLIP_EOT_ID}), which equals only 'argmax' pooling "
                          f"or 'eos' pooling at that id; a tower of another tokenizer cannot be exported as CLIP")
    if getattr(tower, "cls_emb", None) is not None:
        raise ExportError("text tower has a class token (embed_cls), which transformers' CLIP has no place for")
    if getattr(tower, "attn_mask", None) is None:
        raise ExportError("text tower is not causal (no_causal_mask=True); transformers' CLIP text model is")


def _check_vision(visual) -> None:
    if not isinstance(visual, VisionTransformer):
        raise ExportError(f"image tower {type(visual).__name__} is not open_clip's VisionTransformer (timm and "
                          f"ResNet towers have no transformers CLIPVisionModel layout)")
    problems = []
    if visual.attn_pool is not None:
        problems.append("attentional pooling")
    if visual.pool_type != "tok":
        problems.append(f"pool_type={visual.pool_type!r} (transformers pools the class token)")
    if isinstance(visual.ln_pre, nn.Identity):
        problems.append("no_ln_pre")
    if visual.image_size[0] != visual.image_size[1] or visual.patch_size[0] != visual.patch_size[1]:
        problems.append(f"non-square image {visual.image_size} / patch {visual.patch_size}")
    if problems:
        raise ExportError(f"image tower options transformers' CLIPVisionModel does not compute: {problems}")


def _heads(block: nn.Module) -> int:
    attn = block.attn
    return attn.num_heads if isinstance(attn, nn.MultiheadAttention) else attn.heads


def hf_text_config(model, pad_token_id: int) -> Dict:
    """transformers ``CLIPTextConfig`` fields of the model's text tower (shared with the RelPos export)."""
    tower, blocks = text_parts(model)
    projection = tower.text_projection
    if projection is None:
        raise ExportError("text tower has no projection (proj_type='none'); nothing to export as text_embeds")
    projection_dim = projection.out_features if isinstance(projection, nn.Linear) else projection.shape[1]
    return {
        "vocab_size": tower.token_embedding.num_embeddings,
        "hidden_size": tower.token_embedding.embedding_dim,
        "intermediate_size": blocks.resblocks[0].mlp.c_fc.out_features,
        "num_hidden_layers": len(blocks.resblocks),
        "num_attention_heads": _heads(blocks.resblocks[0]),
        "max_position_embeddings": tower.context_length,
        "hidden_act": hf_activation(blocks, "text tower"),
        "layer_norm_eps": layer_norm_eps(nn.ModuleList([blocks, tower.ln_final]), "text tower"),
        "projection_dim": projection_dim,
        "bos_token_id": CLIP_EOT_ID - 1, "eos_token_id": CLIP_EOT_ID, "pad_token_id": pad_token_id,
    }


def hf_vision_config(visual) -> Dict:
    """transformers ``CLIPVisionConfig`` fields of open_clip's ViT image tower (checks exportability)."""
    _check_vision(visual)
    return {
        "hidden_size": visual.conv1.out_channels,
        "intermediate_size": visual.transformer.resblocks[0].mlp.c_fc.out_features,
        "num_hidden_layers": len(visual.transformer.resblocks),
        "num_attention_heads": _heads(visual.transformer.resblocks[0]),
        "image_size": visual.image_size[0], "patch_size": visual.patch_size[0],
        "hidden_act": hf_activation(visual.transformer, "image tower"),
        "layer_norm_eps": layer_norm_eps(visual, "image tower"),
        "projection_dim": visual.proj.shape[1],
    }


def clip_config(model, pad_token_id: int):
    """The ``transformers.CLIPConfig`` of an open_clip CLIP with absolute positions (checks exportability)."""
    from transformers import CLIPConfig

    table = text_position_table(model)  # first: names the relative-position export for RoPE / CoPE towers
    _check_text(model)
    if getattr(model, "logit_bias", None) is not None:
        raise ExportError("model has a logit_bias (SigLIP-style loss); transformers' CLIPModel has none")
    vision_cfg = hf_vision_config(model.visual)
    text_cfg = {**hf_text_config(model, pad_token_id), "max_position_embeddings": table.shape[0]}
    if text_cfg["projection_dim"] != vision_cfg["projection_dim"]:
        raise ExportError(f"text and image embeddings have different widths ({text_cfg['projection_dim']} vs "
                          f"{vision_cfg['projection_dim']}); transformers' CLIPModel has one projection_dim")
    return CLIPConfig(text_config=text_cfg, vision_config=vision_cfg, projection_dim=vision_cfg["projection_dim"],
                      logit_scale_init_value=float(model.logit_scale.detach().reshape(())))


def hf_state_dict(model, expected: Dict[str, torch.Size], prefixes=("text.", "visual.", "logit_scale")):
    """transformers-named tensors of the model (keys starting with ``prefixes``), checked against ``expected``
    (name -> shape of the target transformers model).

    Raises:
        ExportError: naming unmapped open_clip tensors, missing transformers tensors and shape mismatches.
    """
    source = to_custom_text_layout(model.state_dict())
    source = {k: v for k, v in source.items() if k.startswith(prefixes)}
    if "text.positional_embedding" in source:  # absolute positions: the one table the tower adds
        source.pop("text.positional_embedding_res", None)  # Long-CLIP: merged into it
        source["text.positional_embedding"] = text_position_table(model)
    if "logit_scale" in source:
        source["logit_scale"] = source["logit_scale"].reshape(())
    converted, unmapped = open_clip_to_hf(source)
    missing = sorted(set(expected) - set(converted))
    extra = sorted(set(converted) - set(expected))
    shapes = sorted(f"{k} {tuple(converted[k].shape)} vs {tuple(expected[k])}" for k in converted
                    if k in expected and converted[k].shape != expected[k])
    if unmapped or missing or extra or shapes:
        raise ExportError(f"model does not map onto transformers' layout: open_clip tensors without a place "
                          f"{unmapped[:8]}, transformers tensors not filled {missing[:8]}, unexpected {extra[:8]}, "
                          f"shape mismatches {shapes[:8]} (LayerScale, QK-norm or other non-CLIP blocks cannot be "
                          f"exported)")
    return converted


def expected_shapes(model_class, config) -> Dict[str, torch.Size]:
    """Parameter / persistent-buffer shapes of a transformers model, built on the meta device (no memory)."""
    with torch.device("meta"):
        target = model_class(config)
    return {k: v.shape for k, v in target.state_dict().items()}


def save_safetensors(tensors: Dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    # "format": "pt" is what transformers writes and checks for in safetensors metadata
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


def image_processor_for(model):
    """A ``CLIPImageProcessor`` with the model's input size, mean and std (open_clip's eval transform: resize the
    shortest side with bicubic interpolation, centre crop, normalise)."""
    from transformers import CLIPImageProcessor

    cfg = {**asdict(PreprocessCfg()), **get_model_preprocess_cfg(model)}
    size = model.visual.image_size[0]
    if cfg.get("resize_mode", "shortest") != "shortest" or cfg.get("interpolation", "bicubic") != "bicubic":
        warnings.warn(f"open_clip preprocessing {cfg.get('resize_mode')}/{cfg.get('interpolation')} is written as "
                      f"CLIPImageProcessor's shortest-side bicubic resize")
    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                              image_mean=list(cfg["mean"]), image_std=list(cfg["std"]), resample=3)


def export_clip(model, directory, tokenizer: bool = True, pad_token: str = EOT) -> Path:
    """Write ``model`` as a transformers ``CLIPModel`` directory.

    model: an open_clip ``CLIP`` / ``CustomTextCLIP`` whose text tower has absolute positions (stock, Long-CLIP,
        uniform) and whose image tower is open_clip's ViT. Weights are written in their current dtype.
    tokenizer: also write a CLIPTokenizer (model_max_length = the text context) and CLIPImageProcessor.
    pad_token: the tokenizer's pad token (see ``tokenizer.clip_tokenizer``).
    Returns the directory. Raises ``ExportError`` for a model transformers' CLIP cannot reproduce.
    """
    from transformers import CLIPModel, CLIPProcessor

    directory = Path(directory)
    pad_id = OPEN_CLIP_VOCAB - 1 if pad_token == EOT else 0
    config = clip_config(model, pad_token_id=pad_id)
    tensors = hf_state_dict(model, expected_shapes(CLIPModel, config))
    directory.mkdir(parents=True, exist_ok=True)
    config.architectures = ["CLIPModel"]
    config.save_pretrained(str(directory))
    save_safetensors(tensors, directory / "model.safetensors")
    if tokenizer:
        if config.text_config.vocab_size != OPEN_CLIP_VOCAB:
            raise ExportError(f"text vocabulary has {config.text_config.vocab_size} tokens, open_clip's BPE "
                              f"tokenizer {OPEN_CLIP_VOCAB}; export with tokenizer=False and add the right one")
        hf_tokenizer = clip_tokenizer(config.text_config.max_position_embeddings, pad_token)
        CLIPProcessor(image_processor=image_processor_for(model), tokenizer=hf_tokenizer).save_pretrained(
            str(directory))
        write_vocab_files(directory)
    return directory


def stretch_residual(table: torch.Tensor, source_rows: int = STOCK_CONTEXT,
                     keep: int = LONGCLIP_KEEP_POSITIONS) -> float:
    """How far a (L, width) position table is from every Long-CLIP stretch of a ``source_rows`` table: the
    largest absolute residual of the least-squares fit ``table ~ S @ old`` (S = ``stretch_positions`` applied to
    the identity, i.e. the stretch as a linear map), relative to the table's largest entry. ~1e-7 for an exact
    float32 stretch, the size of the training updates for a fine-tuned table."""
    rows = table.shape[0]
    stretch = stretch_positions(torch.eye(source_rows, dtype=torch.float64), rows, keep)  # (rows, source_rows)
    target = table.detach().to(torch.float64).cpu()
    fitted = stretch @ torch.linalg.lstsq(stretch, target).solution
    return float((target - fitted).abs().max() / target.abs().max().clamp_min(1e-30))


def warn_if_unfinetuned_stretch(table: torch.Tensor, where: str) -> bool:
    """Warn (``UnfinetunedPositionsWarning``) when the rows past Long-CLIP's kept 20 follow the stretch of 77 rows
    exactly: the signature of a conversion that copied Long-CLIP's frozen ``positional_embedding`` instead of
    the fine-tuned ``positional_embedding_res``. Returns whether it warned."""
    if table.shape[0] <= STOCK_CONTEXT:
        return False
    residual = stretch_residual(table)
    # A few units in the last place of the stored dtype: an exact float32 stretch comes out at ~0.3 of one, an fp16
    # one at ~0.3 (measured); fine-tuning moves the rows by far more.
    tolerance = 4 * torch.finfo(table.dtype).eps
    if residual > tolerance:
        return False
    warnings.warn(
        f"{where}: text positions {LONGCLIP_KEEP_POSITIONS}..{table.shape[0] - 1} are an exact Long-CLIP stretch of "
        f"{STOCK_CONTEXT} positions (relative residual {residual:.1e}), i.e. never fine-tuned. A converted "
        f"Long-CLIP checkpoint should have its trained positional_embedding_res there; this looks like a conversion "
        f"that copied only positional_embedding. Re-export from the original Long-CLIP checkpoint with "
        f"`python -m open_clip_ext.export transformers --model LongCLIP-ViT-L-14 --pretrained <longclip.pt>`. "
        f"(Expected for a stock CLIP stretched without fine-tuning.)", UnfinetunedPositionsWarning, stacklevel=3)
    return True


def _open_clip_activation(hidden_act: str, where: str) -> Tuple[bool, Dict]:
    """(quick_gelu, act_kwargs) for a transformers activation name."""
    if hidden_act == "quick_gelu":
        return True, {}
    inverse = {v: k for k, v in _GELU_NAMES.items()}
    if hidden_act not in inverse:
        raise ExportError(f"{where}.hidden_act={hidden_act!r}: open_clip's CLIP towers use quick_gelu, gelu or "
                          f"gelu_pytorch_tanh")
    return False, ({} if inverse[hidden_act] == "none" else {"approximate": inverse[hidden_act]})


def _mlp_ratio(config, where: str) -> float:
    ratio = config.intermediate_size / config.hidden_size
    if int(config.hidden_size * ratio) != config.intermediate_size:
        raise ExportError(f"{where}: intermediate_size {config.intermediate_size} is not hidden_size * a ratio "
                          f"open_clip reproduces")
    return ratio


def open_clip_config_from_hf(config) -> Dict:
    """open_clip model config (``CLIP(**cfg)``) of a transformers ``CLIPConfig``. Towers with different
    activations get this package's per-tower ``quick_gelu`` keys (configs.with_tower_activations).

    Raises:
        ExportError: shapes open_clip's config cannot express, or an activation open_clip's towers do not use.
    """
    text, vision = config.text_config, config.vision_config
    text_quick, text_act = _open_clip_activation(text.hidden_act, "text_config")
    vision_quick, vision_act = _open_clip_activation(vision.hidden_act, "vision_config")
    if text.projection_dim != vision.projection_dim:
        raise ExportError("text and vision projection_dim differ; open_clip's CLIP has one embed_dim")
    text_cfg = {"context_length": text.max_position_embeddings, "vocab_size": text.vocab_size,
                "width": text.hidden_size, "heads": text.num_attention_heads, "layers": text.num_hidden_layers,
                "mlp_ratio": _mlp_ratio(text, "text_config")}
    vision_cfg = {"image_size": vision.image_size, "patch_size": vision.patch_size, "width": vision.hidden_size,
                  "layers": vision.num_hidden_layers, "head_width": vision.hidden_size // vision.num_attention_heads,
                  "mlp_ratio": _mlp_ratio(vision, "vision_config")}
    for tower_cfg, hf_cfg, act in ((text_cfg, text, text_act), (vision_cfg, vision, vision_act)):
        if act:
            tower_cfg["act_kwargs"] = act
        if hf_cfg.layer_norm_eps != 1e-5:
            tower_cfg["norm_kwargs"] = {"eps": hf_cfg.layer_norm_eps}
    cfg = {"embed_dim": config.projection_dim, "vision_cfg": vision_cfg, "text_cfg": text_cfg}
    if text_quick != vision_quick:
        return with_tower_activations(cfg, vision_quick_gelu=vision_quick, text_quick_gelu=text_quick)
    if text_quick:
        cfg["quick_gelu"] = True
    return cfg


def import_clip(directory) -> Tuple[CLIP, Dict]:
    """An open_clip ``CLIP`` (fp32, eval mode) and its model config from a transformers CLIPModel directory.

    The text tower gets the directory's single position table (``max_position_embeddings`` rows). Warns with
    ``UnfinetunedPositionsWarning`` when those rows look like an un-fine-tuned Long-CLIP stretch (see
    ``warn_if_unfinetuned_stretch``). Register the config (``open_clip_ext.configs.register_model_config``) to get
    a tokenizer with the right context from ``open_clip.get_tokenizer``.

    Raises:
        ExportError: the directory is not a CLIPModel (names config.json and its model_type) or holds tensors
            open_clip's CLIP has no place for.
    """
    from transformers import AutoConfig, CLIPModel

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise ExportError(f"{directory}: no config.json; expected a transformers CLIPModel directory")
    config = AutoConfig.from_pretrained(str(directory))
    if config.model_type != "clip":
        raise ExportError(f"{directory / 'config.json'}: model_type {config.model_type!r}, expected 'clip' (a "
                          f"CLIPModel directory as written by `python -m open_clip_ext.export transformers`)")
    hf_model = CLIPModel.from_pretrained(str(directory), dtype="auto")
    state_dict, unmapped = hf_to_open_clip(hf_model.state_dict())
    if unmapped:
        raise ExportError(f"{directory}: tensors open_clip's CLIP has no place for: {unmapped[:8]}")
    warn_if_unfinetuned_stretch(state_dict["text.positional_embedding"], str(directory))
    model_cfg = open_clip_config_from_hf(config)
    model = CLIP(**model_cfg)
    flat = {k[len("text."):] if k.startswith("text.") else k: v.float() for k, v in state_dict.items()}
    flat["logit_scale"] = flat["logit_scale"].reshape(model.logit_scale.shape)
    model.load_state_dict(flat, strict=True)
    return model.eval(), model_cfg
