"""Contextual Position Encoding (CoPE, Golovneva et al. 2024, arXiv 2405.18719) as TULIP's text tower uses it.

A query's position for key j is how many gated tokens lie between j and the query (gates are sigmoids of the
attention logits, after the causal mask, so future keys count zero). Positions are fractional; the positional
logit is a linear interpolation between the learned logits of the two neighbouring integer positions.
TULIP (arXiv 2410.10034, github.com/ivonajdenkoska/tulip) keeps one table per layer, read by every head.

``CoPE.forward`` is the plain autograd formulation (every (B, H, L, L) intermediate saved for backward); the
attention layer runs the memory-lean ``open_clip_ext.kernels.cope_torch`` by default and keeps this one for checks.
"""
import torch
from torch import nn


def compiling() -> bool:
    """Whether torch.compile is tracing the current code (False on torch versions without torch.compiler)."""
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and getattr(compiler, "is_compiling", lambda: False)())


def cumsum_exact(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``x.cumsum(dim)`` with every output the exact running sum rounded once to ``x.dtype``.

    CoPE positions reach npos_max - 1 (247), where one fp32 ulp is 1.5e-5: only a sum accumulated in higher
    precision and rounded once stays within 1e-5 of the fp64 answer. The CPU kernel already accumulates float
    and half types in double (ATen's ``acc_type`` on CPU); CUDA's scan and inductor's generated code accumulate
    in the input type, so there we ask for float64 explicitly (one transient (..., L) float64 tensor).
    """
    if x.dtype == torch.float64 or (x.device.type == "cpu" and not compiling()):
        return x.cumsum(dim)
    return x.cumsum(dim, dtype=torch.float64).to(x.dtype)


def suffix_sum(x: torch.Tensor) -> torch.Tensor:
    """s[..., j] = sum_{k >= j} x[..., k] along the last dim, accumulated from the right (same dtype/shape).

    ``total - cumsum + x`` needs no flips but subtracts two numbers of size ~L to get a small one; with saturated
    gates that cancellation drifted 4e-5 (fp32, L = 248) from the fp64 sum. Summing from the right adds only the
    terms that belong to each output, so the one rounding of ``cumsum_exact`` is the only error.
    """
    return cumsum_exact(x.flip(-1)).flip(-1)


def clamp_positions_(positions: torch.Tensor, npos_max: int) -> torch.Tensor:
    """In place: positions made safe to index a table of ``npos_max`` entries, clamped to [0, npos_max-1], NaN -> 0.

    NaN logits (a NaN input, or inf - inf) give NaN positions whose ``.long()`` is arbitrary: an out-of-range
    gather that asserts on GPU and in compiled code. The attention output of such a row is NaN either way.
    """
    return positions.clamp_(0, npos_max - 1).nan_to_num_(nan=0.0)


class CoPE(nn.Module):
    """Per-layer learned table ``pos_emb`` of shape (1, head_dim, npos_max), zero-initialised (TULIP's layout)."""

    def __init__(self, npos_max: int, head_dim: int):
        super().__init__()
        self.npos_max = npos_max
        self.pos_emb = nn.Parameter(torch.zeros(1, head_dim, npos_max))

    def extra_repr(self) -> str:
        return f"npos_max={self.npos_max}, head_dim={self.pos_emb.shape[1]}"

    def forward(self, query: torch.Tensor, attn_logits: torch.Tensor) -> torch.Tensor:
        """Positional logits (B, H, L, L) to add to the causally masked ``attn_logits`` (B, H, L, L).

        ``query`` (B, H, L, head_dim) reads the table; L <= npos_max (the attention layer refuses longer input).
        Masked keys (logit -inf) have gate 0 and position 0.
        """
        gates = torch.sigmoid(attn_logits)
        positions = clamp_positions_(suffix_sum(gates), self.npos_max)
        floor = positions.floor()
        weight_ceil = positions - floor
        logits_at_int = torch.matmul(query, self.pos_emb.to(query.dtype))  # (B, H, L, npos_max)
        # clamp_positions_ leaves finite values in [0, npos_max - 1], so floor and ceil index inside the table.
        logits_floor = logits_at_int.gather(-1, floor.long())
        logits_ceil = logits_at_int.gather(-1, positions.ceil().long())
        return logits_floor + weight_ceil * (logits_ceil - logits_floor)
