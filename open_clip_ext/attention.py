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
from .kernels.cope_torch import cope_attention
from .rope import RotaryEmbedding

COPE_SCALES = ("tulip", "paper")


class RelPosAttention(nn.Module):
    """Multi-head self-attention whose only notion of order is RoPE or CoPE; causal unless ``causal=False``.

    position='rope': q and k (not v) are rotated, then ``F.scaled_dot_product_attention`` with a causal mask, or
      with none (``causal=False``: every query attends to every key, padding included, as a stock bidirectional
      tower such as SigLIP's does).
    position='cope': logits are computed explicitly since CoPE's positions are a function of them.
      cope_scale='tulip' reproduces TULIP's released weights: q is scaled by 1/sqrt(d) before the product and
      the product again by 1/sqrt(d) (1/d overall), and the CoPE table is read with the scaled q;
      cope_scale='paper' is the CoPE paper's 1/sqrt(d) with the table read by the unscaled q. CoPE is causal only
      (its gates count the tokens between a key and the query in the past; configs.text_tower_refusal says why).
    """

    def __init__(self, width: int, heads: int, position: str, context_length: int,
                 cope_qk_norm: bool = True, cope_scale: str = "tulip", norm_layer: Callable = nn.LayerNorm,
                 causal: bool = True):
        super().__init__()
        if position == "cope" and not causal:
            raise ValueError("CoPE attention is causal only (its positions count gated tokens in the past)")
        self.causal = causal
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
            self.cope_impl = "function"

    def _project_heads(self, x: torch.Tensor, rows: slice, count: int):
        """``count`` of q/k/v from ``in_proj`` rows ``rows``: (B, L, width) -> ``count`` x (B, heads, L, head_dim)."""
        out = F.linear(x, self.in_proj_weight[rows].to(x.dtype), self.in_proj_bias[rows].to(x.dtype))
        return out.unflatten(-1, (count, self.heads, self.head_dim)).permute(2, 0, 3, 1, 4).unbind(0)

    def _cope_attention(self, q, k, v, future: Optional[torch.Tensor] = None):
        """q (B, H, Lq, d), k and v (B, H, L, d); ``future`` (bool, broadcastable to (B, H, Lq, L)) masks keys
        after each query, None for the square causal case (which runs the memory-lean path by default)."""
        seq_len = k.shape[-2]
        if seq_len > self.cope.npos_max:
            raise ValueError(
                f"CoPE text tower has position tables for {self.cope.npos_max} tokens and cannot read "
                f"{seq_len}; truncate the input (tokenizer context_length={self.cope.npos_max})")
        q, k = self.q_ln(q), self.k_ln(k)
        scale = self.head_dim ** -0.5
        # TULIP reads the table with q / sqrt(d) and scales the product once more (1/d overall); the paper reads
        # it with q. Either way logits = scale * cope_query @ k^T.
        cope_query = q * scale if self.cope_scale == "tulip" else q
        if future is None and self.cope_impl != "autograd":
            return cope_attention(cope_query, k, v, self.cope.pos_emb, scale, impl=self.cope_impl)
        if future is None:
            future = torch.ones(seq_len, seq_len, dtype=torch.bool, device=k.device).triu_(1)
        return self._cope_attention_autograd(cope_query, k, v, scale, future)

    def _cope_attention_autograd(self, cope_query, k, v, scale, future):
        """The op-by-op formulation (saves every (B, H, Lq, L) intermediate); checks the default path, and serves
        the pooled-rows case, where Lq = 1 makes those intermediates small."""
        # Scaling q (L x d) rather than the logits (L x L): same product, fewer operations.
        logits = torch.matmul(cope_query * scale, k.transpose(-1, -2)).masked_fill(future, float("-inf"))
        logits = logits + self.cope(cope_query, logits.to(cope_query.dtype)).to(logits.dtype)
        return torch.matmul(logits.softmax(dim=-1).to(v.dtype), v)

    def forward(self, x: torch.Tensor, rotary: Optional[RotaryEmbedding] = None,
                query_rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x (B, L, width) -> (B, L, width); with ``query_rows`` (B,) int64, only the query at that row of each
        sequence is computed (keys and values still span all L): -> (B, width)."""
        if query_rows is None:
            q, k, v = self._project_heads(x, slice(None), 3)
        else:
            width = x.shape[-1]
            batch = torch.arange(x.shape[0], device=x.device)
            (q,) = self._project_heads(x[batch, query_rows].unsqueeze(1), slice(0, width), 1)  # (B, H, 1, d)
            k, v = self._project_heads(x, slice(width, None), 2)
            # Keys after the query row are masked, exactly as the causal mask does for that row.
            future = (torch.arange(x.shape[1], device=x.device) > query_rows[:, None])[:, None, None, :]
            if not self.causal:
                future = None
        if self.position == "rope":
            k = rotary(k)
            if query_rows is None:
                out = F.scaled_dot_product_attention(rotary(q), k, v, is_causal=self.causal)
            else:
                out = F.scaled_dot_product_attention(rotary(q, x.shape[1], positions=query_rows), k, v,
                                                     attn_mask=None if future is None else ~future)
        else:
            out = self._cope_attention(q, k, v, None if query_rows is None else future)
        out = self.out_proj(out.transpose(1, 2).flatten(2))
        return out if query_rows is None else out.squeeze(1)


class RelPosResidualBlock(nn.Module):
    """Pre-norm transformer block, stock CLIP layout, with relative-position attention."""

    def __init__(self, width: int, heads: int, position: str, context_length: int, mlp_ratio: float = 4.0,
                 ls_init_value: Optional[float] = None, act_layer: Callable = nn.GELU,
                 norm_layer: Callable = nn.LayerNorm, cope_qk_norm: bool = True, cope_scale: str = "tulip",
                 causal: bool = True):
        super().__init__()
        self.ln_1 = norm_layer(width)
        self.attn = RelPosAttention(width, heads, position, context_length, cope_qk_norm, cope_scale, norm_layer,
                                    causal)
        self.ls_1 = LayerScale(width, ls_init_value) if ls_init_value is not None else nn.Identity()
        self.ln_2 = norm_layer(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, hidden)),
            ("gelu", act_layer()),
            ("c_proj", nn.Linear(hidden, width)),
        ]))
        self.ls_2 = LayerScale(width, ls_init_value) if ls_init_value is not None else nn.Identity()

    def forward(self, x: torch.Tensor, rotary: Optional[RotaryEmbedding] = None,
                query_rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x (B, L, width) -> (B, L, width), or (B, width) at ``query_rows`` (B,) (see ``RelPosAttention``)."""
        attn = self.attn(self.ln_1(x), rotary, query_rows)
        if query_rows is not None:
            x = x[torch.arange(x.shape[0], device=x.device), query_rows]
        x = x + self.ls_1(attn)
        return x + self.ls_2(self.mlp(self.ln_2(x)))
