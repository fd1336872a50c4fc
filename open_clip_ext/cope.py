"""Contextual Position Encoding (CoPE, Golovneva et al. 2024) as TULIP's text tower uses it.

A query's position for key j is how many gated tokens lie between j and the query (gates are sigmoids of the
attention logits, after the causal mask, so future keys count zero). Positions are fractional; the positional
logit is a linear interpolation between the learned logits of the two neighbouring integer positions.
"""
import torch
from torch import nn


class CoPE(nn.Module):
    """Per-layer learned table ``pos_emb`` of shape (1, head_dim, npos_max), zero-initialised (TULIP's layout)."""

    def __init__(self, npos_max: int, head_dim: int):
        super().__init__()
        self.npos_max = npos_max
        self.pos_emb = nn.Parameter(torch.zeros(1, head_dim, npos_max))

    def extra_repr(self) -> str:
        return f"npos_max={self.npos_max}, head_dim={self.pos_emb.shape[1]}"

    def forward(self, query: torch.Tensor, attn_logits: torch.Tensor) -> torch.Tensor:
        """Positional logits to add to ``attn_logits`` (B, H, L, L), for queries (B, H, L, head_dim)."""
        gates = torch.sigmoid(attn_logits)
        # p[i, j] = sum_{k >= j} gates[i, k], written as total - cumsum + own gate: one cumsum and no flips.
        # Masked (future) keys have gate 0 and p ~ 0, where rounding can dip below 0: clamp both ends.
        positions = (gates.sum(dim=-1, keepdim=True) - gates.cumsum(dim=-1) + gates).clamp(0, self.npos_max - 1)
        floor = positions.floor()
        weight_ceil = positions - floor
        logits_at_int = torch.matmul(query, self.pos_emb.to(query.dtype))  # (B, H, L, npos_max)
        logits_floor = logits_at_int.gather(-1, floor.long())
        logits_ceil = logits_at_int.gather(-1, positions.ceil().long())
        return logits_floor + weight_ceil * (logits_ceil - logits_floor)
