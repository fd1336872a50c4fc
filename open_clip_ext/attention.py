"""Self-attention and residual block with relative positions (RoPE or CoPE) for the CLIP text tower.

Parameter names follow open_clip's stock ``ResidualAttentionBlock`` (``ln_1``, ``attn.in_proj_weight``,
``attn.in_proj_bias``, ``attn.out_proj``, ``ln_2``, ``mlp.c_fc``, ``mlp.c_proj``, ``ls_1``/``ls_2``) so that
77-token CLIP weights map onto it one to one; CoPE adds ``attn.cope.pos_emb`` and TULIP's ``attn.q_ln`` /
``attn.k_ln``. Stock blocks use ``nn.MultiheadAttention``, which has no place to rotate q and k: hence our own.
"""
from collections import OrderedDict
from typing import Callable, Optional

import torch
from torch import nn
from torch.nn import functional as F
from open_clip.transformer import LayerScale

from .cope import CoPE
from .rope import RotaryEmbedding

COPE_SCALES = ("tulip", "paper")


class RelPosAttention(nn.Module):
    """Causal multi-head self-attention whose only notion of order is RoPE or CoPE.

    position='rope': q and k (not v) are rotated, then ``F.scaled_dot_product_attention`` with a causal mask.
    position='cope': logits are computed explicitly since CoPE's positions are a function of them.
      cope_scale='tulip' reproduces TULIP's released weights: q is scaled by 1/sqrt(d) before the product and
      the product again by 1/sqrt(d) (1/d overall), and the CoPE table is read with the scaled q;
      cope_scale='paper' is the CoPE paper's 1/sqrt(d) with the table read by the unscaled q.
    """

    def __init__(self, width: int, heads: int, position: str, context_length: int,
                 cope_qk_norm: bool = True, cope_scale: str = "tulip", norm_layer: Callable = nn.LayerNorm):
        super().__init__()
        if width % heads:
            raise ValueError(f"text width {width} is not divisible by {heads} heads")
        if position not in ("rope", "cope"):
            raise ValueError(f"unknown relative position type {position!r}; expected 'rope' or 'cope'")
        if cope_scale not in COPE_SCALES:
            raise ValueError(f"cope_scale must be one of {COPE_SCALES}, got {cope_scale!r}")
        self.heads = heads
        self.head_dim = width // heads
        self.position = position
        self.cope_scale = cope_scale
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        if position == "cope":
            self.cope = CoPE(context_length, self.head_dim)
            self.q_ln = norm_layer(self.head_dim) if cope_qk_norm else nn.Identity()
            self.k_ln = norm_layer(self.head_dim) if cope_qk_norm else nn.Identity()

    def _split_heads(self, x: torch.Tensor):
        qkv = F.linear(x, self.in_proj_weight.to(x.dtype), self.in_proj_bias.to(x.dtype))
        # (B, L, 3 * width) -> three (B, heads, L, head_dim)
        return qkv.unflatten(-1, (3, self.heads, self.head_dim)).permute(2, 0, 3, 1, 4).unbind(0)

    def _cope_attention(self, q, k, v):
        seq_len = q.shape[-2]
        if seq_len > self.cope.npos_max:
            raise ValueError(
                f"CoPE text tower has position tables for {self.cope.npos_max} tokens and cannot read "
                f"{seq_len}; truncate the input (tokenizer context_length={self.cope.npos_max})")
        q, k = self.q_ln(q), self.k_ln(k)
        scale = self.head_dim ** -0.5
        # Scales are applied to q (L x d) rather than to the logits (L x L): same product, fewer operations.
        if self.cope_scale == "tulip":
            cope_query = q * scale
            logits = torch.matmul(cope_query * scale, k.transpose(-1, -2))
        else:
            cope_query = q
            logits = torch.matmul(q * scale, k.transpose(-1, -2))
        causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=q.device).triu_(1)
        logits = logits.masked_fill(causal, float("-inf"))
        logits = logits + self.cope(cope_query, logits.to(cope_query.dtype)).to(logits.dtype)
        return torch.matmul(logits.softmax(dim=-1).to(v.dtype), v)

    def forward(self, x: torch.Tensor, rotary: Optional[RotaryEmbedding] = None) -> torch.Tensor:
        q, k, v = self._split_heads(x)
        if self.position == "rope":
            q, k = rotary(q), rotary(k)
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            out = self._cope_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).flatten(2))


class RelPosResidualBlock(nn.Module):
    """Pre-norm transformer block, stock CLIP layout, with relative-position attention."""

    def __init__(self, width: int, heads: int, position: str, context_length: int, mlp_ratio: float = 4.0,
                 ls_init_value: Optional[float] = None, act_layer: Callable = nn.GELU,
                 norm_layer: Callable = nn.LayerNorm, cope_qk_norm: bool = True, cope_scale: str = "tulip"):
        super().__init__()
        self.ln_1 = norm_layer(width)
        self.attn = RelPosAttention(width, heads, position, context_length, cope_qk_norm, cope_scale, norm_layer)
        self.ls_1 = LayerScale(width, ls_init_value) if ls_init_value is not None else nn.Identity()
        self.ln_2 = norm_layer(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, hidden)),
            ("gelu", act_layer()),
            ("c_proj", nn.Linear(hidden, width)),
        ]))
        self.ls_2 = LayerScale(width, ls_init_value) if ls_init_value is not None else nn.Identity()

    def forward(self, x: torch.Tensor, rotary: Optional[RotaryEmbedding] = None) -> torch.Tensor:
        x = x + self.ls_1(self.attn(self.ln_1(x), rotary))
        return x + self.ls_2(self.mlp(self.ln_2(x)))
