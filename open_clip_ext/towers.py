"""Text-tower builders: the towers open_clip's model constructors get for this package's ``pos_embed_type``s.

open_clip's ``_build_text_tower`` builds a stock tower from a ``CLIPTextCfg``; ``build_ext_text_tower`` is its
counterpart for RoPE / CoPE / Long-CLIP / uniform-interpolation / context-only (Hugging Face) configs
(patches.py routes to it).
"""
from functools import partial
from typing import Optional

import open_clip.model
import torch
from torch import nn
from open_clip.model import CLIPTextCfg
from open_clip.transformer import LayerNorm, LayerNormFp32, QuickGELU

from .configs import CONTEXT_ONLY, EXT_TEXT_KEYS, text_tower_refusal
from .longclip import LongCLIPTextTransformer
from .text_tower import RelPosTextTransformer

def _stock_text_cfg(text_cfg: dict) -> CLIPTextCfg:
    return CLIPTextCfg(**{k: v for k, v in text_cfg.items() if k not in EXT_TEXT_KEYS})


def _act_and_norm(stock: CLIPTextCfg, quick_gelu: bool, cast_dtype: Optional[torch.dtype]):
    """Activation and norm layers as open_clip's own text-tower builder picks them."""
    act_layer = QuickGELU if quick_gelu else nn.GELU
    if stock.act_kwargs:
        act_layer = partial(act_layer, **stock.act_kwargs)
    norm_layer = LayerNormFp32 if cast_dtype in (torch.float16, torch.bfloat16) else LayerNorm
    if stock.norm_kwargs:
        norm_layer = partial(norm_layer, **stock.norm_kwargs)
    return act_layer, norm_layer


def build_relpos_text_tower(embed_dim: int, text_cfg: dict, quick_gelu: bool = False,
                            cast_dtype: Optional[torch.dtype] = None) -> RelPosTextTransformer:
    stock = _stock_text_cfg(text_cfg)
    act_layer, norm_layer = _act_and_norm(stock, quick_gelu, cast_dtype)
    position = text_cfg["pos_embed_type"]
    options = {k: text_cfg[k] for k in EXT_TEXT_KEYS - {"pos_embed_type"} if k in text_cfg}
    if position == "rope":
        options = {k: v for k, v in options.items() if k.startswith("rope_")}
    else:
        options = {k: v for k, v in options.items() if k.startswith("cope_")}
    return RelPosTextTransformer(
        context_length=stock.context_length,
        vocab_size=stock.vocab_size,
        width=stock.width,
        heads=stock.heads,
        layers=stock.layers,
        mlp_ratio=stock.mlp_ratio,
        ls_init_value=stock.ls_init_value,
        output_dim=None if stock.proj_type == "none" else embed_dim,
        position=position,
        pool_type=stock.pool_type,
        eos_id=stock.eos_id,
        no_causal_mask=stock.no_causal_mask,
        proj_bias=stock.proj_bias,
        output_tokens=stock.output_tokens,
        act_layer=act_layer,
        norm_layer=norm_layer,
        **options,
    )


def build_longclip_text_tower(embed_dim: int, text_cfg: dict, quick_gelu: bool = False,
                              cast_dtype: Optional[torch.dtype] = None) -> LongCLIPTextTransformer:
    """A stock text tower (every stock option honoured) with Long-CLIP's position tables."""
    stock = _stock_text_cfg(text_cfg)
    act_layer, norm_layer = _act_and_norm(stock, quick_gelu, cast_dtype)
    return LongCLIPTextTransformer(
        context_length=stock.context_length, vocab_size=stock.vocab_size, width=stock.width, heads=stock.heads,
        layers=stock.layers, mlp_ratio=stock.mlp_ratio, ls_init_value=stock.ls_init_value, output_dim=embed_dim,
        embed_cls=stock.embed_cls, no_causal_mask=stock.no_causal_mask, pad_id=stock.pad_id, eos_id=stock.eos_id,
        pool_type=stock.pool_type, proj_type=stock.proj_type, proj_bias=stock.proj_bias,
        output_tokens=stock.output_tokens, act_layer=act_layer, norm_layer=norm_layer,
        block_type=stock.block_type, qk_norm=stock.qk_norm, scaled_cosine_attn=stock.scaled_cosine_attn,
        scale_heads=stock.scale_heads, scale_attn_inner=stock.scale_attn_inner, scale_attn=stock.scale_attn,
        scale_fc=stock.scale_fc,
        keep_positions=text_cfg.get("longclip_keep_positions", 20),
    )


def build_uniform_text_tower(embed_dim: int, text_cfg: dict, quick_gelu: bool = False,
                             cast_dtype: Optional[torch.dtype] = None):
    """The stock tower: open_clip's loader resizes 77 learned positions uniformly (its resize_text_pos_embed)."""
    stock_cfg = {k: v for k, v in text_cfg.items() if k not in EXT_TEXT_KEYS}
    # Without pos_embed_type the (patched) builder hands the config to open_clip's own.
    return open_clip.model._build_text_tower(embed_dim, stock_cfg, quick_gelu, cast_dtype)


def build_context_text_tower(embed_dim: int, text_cfg: dict, quick_gelu: bool = False,
                             cast_dtype: Optional[torch.dtype] = None):
    """open_clip's Hugging Face tower, unchanged but for ``context_length``: the variant's (the tokenizer's
    length) where open_clip's HFTextEncoder reports the transformers config's ``max_position_embeddings``."""
    tower = build_uniform_text_tower(embed_dim, text_cfg, quick_gelu, cast_dtype)
    tower.context_length = int(text_cfg["context_length"])
    return tower


_TOWER_BUILDERS = {
    "rope": build_relpos_text_tower,
    "cope": build_relpos_text_tower,
    "longclip": build_longclip_text_tower,
    "uniform": build_uniform_text_tower,
    CONTEXT_ONLY: build_context_text_tower,
}


def is_ext_model(model) -> bool:
    """A CLIP whose text tower this package built with its own class (relative positions or Long-CLIP): its
    checkpoints go through ``convert.load_checkpoint_into``."""
    return isinstance(getattr(model, "text", None), (RelPosTextTransformer, LongCLIPTextTransformer))


def build_ext_text_tower(embed_dim: int, text_cfg: dict, quick_gelu: bool = False,
                         cast_dtype: Optional[torch.dtype] = None) -> nn.Module:
    """The tower for ``text_cfg.pos_embed_type`` (a key of _TOWER_BUILDERS).

    Raises:
        ValueError: a stock option the tower would not reproduce (``configs.text_tower_refusal``'s reason)."""
    position = text_cfg["pos_embed_type"]
    refusal = text_tower_refusal({"text_cfg": text_cfg}, position)
    if refusal:
        raise ValueError(f"cannot build a {position} text tower: {refusal}")
    return _TOWER_BUILDERS[position](embed_dim, text_cfg, quick_gelu, cast_dtype)
