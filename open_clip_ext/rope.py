"""Rotary position embedding (RoPE) in the interleaved-pair convention TULIP's weights were trained with.

Channel pairs (2i, 2i+1) of a head are one complex number rotated by angle ``position * theta**(-2i/d)``
(the LLaMA convention), not the "rotate_half" convention that pairs channel i with i + d/2. The two give
different embeddings for the same weights, so the convention is part of the checkpoint format.

Sources: RoPE, arXiv 2104.09864; TULIP, arXiv 2410.10034, github.com/ivonajdenkoska/tulip @ 132c174f
(its RoPE text transformer in open_clip/transformer.py); convention and NTK rule in docs/text_towers.md.
"""
from typing import Optional

import torch
from torch import nn


def dynamic_ntk_theta(theta: float, head_dim: int, scaling_factor: float, trained_length: int,
                      context_length: int) -> float:
    """TULIP's stage-2 "dynamic NTK" base: theta * ((s * new / old) - (s - 1)) ** (d / (d - 2))."""
    growth = scaling_factor * context_length / trained_length - (scaling_factor - 1)
    return theta * growth ** (head_dim / (head_dim - 2))


def rope_frequencies(head_dim: int, theta: float) -> torch.Tensor:
    """Angular frequency of each channel pair: theta ** (-2i / d), i = 0 .. d/2 - 1 (float64 for exact tables)."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head dimension, got {head_dim}")
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim
    return 1.0 / (theta ** exponents)


class RotaryEmbedding(nn.Module):
    """Precomputed cos/sin tables for positions 0..max_positions-1, applied to q and k.

    The tables are non-persistent buffers: they are a pure function of (head_dim, theta, length), so they are
    rebuilt on load instead of stored, and a model built with a longer context simply has longer tables.
    """

    def __init__(self, head_dim: int, max_positions: int, theta: float = 10000.0):
        super().__init__()
        self.head_dim = head_dim
        self.max_positions = max_positions
        self.theta = float(theta)
        cos, sin = self._tables(max_positions)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def _tables(self, length: int, device=None):
        """float64 cos and sin of every (position, channel pair) angle, each of shape (length, head_dim / 2)."""
        positions = torch.arange(length, dtype=torch.float64, device=device)
        angles = torch.outer(positions, rope_frequencies(self.head_dim, self.theta).to(device))
        return angles.cos(), angles.sin()

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, max_positions={self.max_positions}, theta={self.theta:g}"

    def forward(self, x: torch.Tensor, seq_len: Optional[int] = None,
                positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Rotate x of shape (..., L, head_dim): pair (x[2i], x[2i+1]) times exp(1j * position * freq_i).

        Positions are 0..L-1 along the sequence axis; or, with ``positions`` (B,) int64 and x (B, H, 1,
        head_dim), each sequence's one row is rotated by its own position (``seq_len`` is then the sequence
        length those positions lie in, for the length check).
        """
        seq_len = x.shape[-2] if seq_len is None else seq_len
        if seq_len > self.max_positions:
            raise ValueError(
                f"sequence of {seq_len} tokens is longer than the {self.max_positions} rotary positions this "
                f"model was built with; create it with force_context_length={seq_len} (or larger)")
        cos, sin = self.cos[:seq_len], self.sin[:seq_len]
        if cos.dtype not in (torch.float32, torch.float64):
            # model.to(bfloat16) casts buffers too; angles of late positions need full precision.
            cos, sin = self._tables(seq_len, x.device)
        if positions is not None:
            cos, sin = cos[positions][:, None, None], sin[positions][:, None, None]  # (B, 1, 1, head_dim / 2)
        # Rotate in (at least) float32 and cast back, as TULIP does, so bf16 runs see the same rotation.
        # One complex multiply per pair is ~3x faster (forward+backward) than the real-valued pair swap.
        compute = torch.promote_types(x.dtype, torch.float32)
        rotation = torch.complex(cos.to(compute), sin.to(compute))
        pairs = torch.view_as_complex(x.to(compute).unflatten(-1, (-1, 2)).contiguous())
        return torch.view_as_real(pairs * rotation).flatten(-2).to(x.dtype)
