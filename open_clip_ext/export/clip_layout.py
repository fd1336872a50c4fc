"""Parameter names and layouts: open_clip's CLIP <-> transformers' CLIP (and this package's RelPos text models).

open_clip keys here are in the ``text.``-prefixed CustomTextCLIP layout (``convert.to_custom_text_layout`` brings a
stock ``CLIP`` state dict into it). The differences to transformers (``transformers/models/clip/modeling_clip.py``):
- attention: open_clip's ``nn.MultiheadAttention`` packs q, k, v in one ``in_proj_weight`` (3*width, width) /
  ``in_proj_bias``; transformers has ``q_proj``, ``k_proj``, ``v_proj`` (split / concatenated in that order);
- projections: open_clip stores ``text_projection`` and ``visual.proj`` as (width, embed) matrices applied as
  ``x @ P``; transformers has ``nn.Linear(width, embed)`` whose weight is ``P.T``;
- everything else is a rename (tables below).
"""
import re
from typing import Dict, List, Tuple

import torch

# open_clip block suffix -> transformers layer suffix (CoPE additions last)
BLOCK_RENAMES = (
    ("ln_1.", "layer_norm1."), ("attn.out_proj.", "self_attn.out_proj."), ("ln_2.", "layer_norm2."),
    ("mlp.c_fc.", "mlp.fc1."), ("mlp.c_proj.", "mlp.fc2."),
    ("attn.q_ln.", "self_attn.q_norm."), ("attn.k_ln.", "self_attn.k_norm."),
    ("attn.cope.pos_emb", "self_attn.cope_table"),
)
TOWER_BLOCKS = (("text.transformer.resblocks.", "text_model.encoder.layers."),
                ("visual.transformer.resblocks.", "vision_model.encoder.layers."))
PLAIN_RENAMES = {
    "text.token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "text.positional_embedding": "text_model.embeddings.position_embedding.weight",
    "text.ln_final.weight": "text_model.final_layer_norm.weight",
    "text.ln_final.bias": "text_model.final_layer_norm.bias",
    "text.text_projection.weight": "text_projection.weight",  # an nn.Linear projection (proj_bias=True)
    "text.text_projection.bias": "text_projection.bias",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "logit_scale": "logit_scale",
}
TRANSPOSED = {"text.text_projection": "text_projection.weight", "visual.proj": "visual_projection.weight"}
QKV = ("q_proj", "k_proj", "v_proj")
_IN_PROJ = re.compile(r"^(?P<block>.+\.)attn\.in_proj_(?P<kind>weight|bias)$")
_HF_QKV = re.compile(r"^(?P<layer>.+\.)self_attn\.(?P<which>[qkv])_proj\.(?P<kind>weight|bias)$")


def _block_prefix(key: str, pairs) -> Tuple[str, str, str]:
    """(source prefix, target prefix, rest) for a key inside a block stack, or ('', '', key) outside one."""
    for source, target in pairs:
        if key.startswith(source):
            index, _, rest = key[len(source):].partition(".")
            return f"{source}{index}.", f"{target}{index}.", rest
    return "", "", key


def _rename_in_block(rest: str, renames) -> str:
    for source, target in renames:
        if rest.startswith(source):
            return target + rest[len(source):]
    return None


def _convert(state_dict, blocks, block_renames, plain, transposed, attention):
    """Rename every tensor by the tables given; ``attention(key, target_prefix)`` returns the converted q/k/v
    tensors for an attention-projection key ({} when another key of the same layer produces them), None otherwise.
    Returns (converted, unmapped source keys). Tensors are made contiguous (safetensors needs it)."""
    out, unmapped = {}, []
    for key, tensor in state_dict.items():
        source, target, rest = _block_prefix(key, blocks)
        if source:
            fused = attention(key, target)
            if fused is not None:
                out.update(fused)
                continue
            renamed = _rename_in_block(rest, block_renames)
            if renamed is not None:
                out[target + renamed] = tensor.contiguous()
                continue
        elif key in transposed:
            out[transposed[key]] = tensor.t().contiguous()
            continue
        elif key in plain:
            out[plain[key]] = tensor.contiguous()
            continue
        unmapped.append(key)
    return out, unmapped


def open_clip_to_hf(state_dict: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """transformers-named tensors from a ``text.``-prefixed open_clip state dict, and the keys that have no
    counterpart (the caller decides whether that is an error)."""
    def split_in_proj(key, target):
        in_proj = _IN_PROJ.match(key)
        if in_proj is None:
            return None
        parts = state_dict[key].chunk(3, dim=0)
        return {f"{target}self_attn.{name}.{in_proj['kind']}": part for name, part in zip(QKV, parts)}

    return _convert(state_dict, TOWER_BLOCKS, BLOCK_RENAMES, PLAIN_RENAMES, TRANSPOSED, split_in_proj)


def hf_to_open_clip(state_dict: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """The inverse of ``open_clip_to_hf``: ``text.``-prefixed open_clip tensors and the unmapped transformers keys.

    Raises:
        KeyError: a layer with some but not all of q_proj / k_proj / v_proj (names the missing key).
    """
    def concat_qkv(key, target):
        qkv = _HF_QKV.match(key)
        if qkv is None:
            return None
        if qkv["which"] != "q":  # the three are gathered once, at q
            return {}
        parts = [state_dict[f"{qkv['layer']}self_attn.{name}.{qkv['kind']}"] for name in QKV]
        return {f"{target}attn.in_proj_{qkv['kind']}": torch.cat(parts, dim=0)}

    transposed = {v: k for k, v in TRANSPOSED.items()}
    if "text_projection.bias" in state_dict:  # open_clip's nn.Linear text projection: weight not transposed
        del transposed["text_projection.weight"]
    return _convert(state_dict, tuple((t, s) for s, t in TOWER_BLOCKS), tuple((t, s) for s, t in BLOCK_RENAMES),
                    {v: k for k, v in PLAIN_RENAMES.items()}, transposed, concat_qkv)
