"""Rotary position embedding (RoPE) in the interleaved-pair convention TULIP's weights were trained with.

Channel pairs (2i, 2i+1) of a head are one complex number rotated by angle ``position * theta**(-2i/d)``
(the LLaMA convention), not the "rotate_half" convention that pairs channel i with i + d/2. The two give
different embeddings for the same weights, so the convention is part of the checkpoint format.

Sources: RoPE, arXiv 2104.09864; TULIP, arXiv 2410.10034, github.com/ivonajdenkoska/tulip @ 132c174f
(its RoPE text transformer in open_clip/transformer.py); convention and NTK rule in docs/text_towers.md.

Reading past the trained length (``RotaryEmbedding.set_scaling``, a runtime override that leaves the model config
alone), with s = max(1, new length / trained length):
- 'none': the trained frequencies; positions past the trained length rotate further than any seen in training.
- 'ntk': NTK-aware scaling of the base, theta' = theta * s ** (d / (d - 2)) (bloc97, "NTK-Aware Scaled RoPE",
  r/LocalLLaMA 2023; written out in YaRN, arXiv 2309.00071, section 3.1): TULIP's dynamic-NTK rule with factor 1.
- 'yarn': YaRN, arXiv 2309.00071 section 3.2-3.4: pair i of wavelength lambda_i = 2 pi / f_i completes
  r_i = L / lambda_i turns over the trained length L; its frequency is interpolated by the ramp
  gamma_i = clamp((r_i - alpha) / (beta - alpha), 0, 1): f_i' = (1 - gamma_i) f_i / s + gamma_i f_i (alpha = 1,
  beta = 32, the paper's values), and the logits are scaled by 1 / t with sqrt(1 / t) = 0.1 ln(s) + 1, applied as
  that factor on the rotated q and on the rotated k (folded into the cos/sin tables, as the paper suggests).
At s = 1 all three are the plain RoPE.
"""
import math
from typing import Optional, Tuple

import torch
from torch import nn


def dynamic_ntk_theta(theta: float, head_dim: int, scaling_factor: float, trained_length: int,
                      context_length: int) -> float:
    """TULIP's stage-2 "dynamic NTK" base: theta * ((s * new / old) - (s - 1)) ** (d / (d - 2))."""
    growth = scaling_factor * context_length / trained_length - (scaling_factor - 1)
    return theta * growth ** (head_dim / (head_dim - 2))


POSITION_SCALINGS = ("none", "ntk", "yarn")
YARN_ALPHA, YARN_BETA = 1.0, 32.0


def scaled_frequencies(head_dim: int, theta: float, kind: str, trained_length: int,
                       context_length: int) -> Tuple[torch.Tensor, float]:
    """(frequencies float64 (head_dim / 2,), magnitude) of RoPE read at ``context_length`` with position scaling
    ``kind`` (module docstring); the magnitude multiplies cos and sin (YaRN's sqrt(1/t), else 1).

    Raises ValueError for an unknown kind or a non-positive length."""
    if kind not in POSITION_SCALINGS:
        raise ValueError(f"position scaling must be one of {', '.join(POSITION_SCALINGS)}, got {kind!r}")
    if trained_length < 1 or context_length < 1:
        raise ValueError(f"context lengths must be positive, got {trained_length} and {context_length}")
    scale = max(1.0, context_length / trained_length)  # a shorter context is read as trained
    if kind == "ntk":
        return rope_frequencies(head_dim, dynamic_ntk_theta(theta, head_dim, 1.0, 1, scale)), 1.0
    frequencies = rope_frequencies(head_dim, theta)
    if kind == "none":
        return frequencies, 1.0
    turns = trained_length * frequencies / (2 * math.pi)
    ramp = ((turns - YARN_ALPHA) / (YARN_BETA - YARN_ALPHA)).clamp(0.0, 1.0)
    return (1 - ramp) * frequencies / scale + ramp * frequencies, 0.1 * math.log(scale) + 1.0


def rope_frequencies(head_dim: int, theta: float) -> torch.Tensor:
    """Angular frequency of each channel pair: theta ** (-2i / d), i = 0 .. d/2 - 1 (float64 for exact tables)."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head dimension, got {head_dim}")
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim
    return 1.0 / (theta ** exponents)


class RotaryEmbedding(nn.Module):
    """Precomputed cos/sin tables for positions 0..max_positions-1, applied to q and k.

    The tables are non-persistent buffers: they are a pure function of (head_dim, theta, length, scaling), so they
    are rebuilt on load instead of stored, and a model built with a longer context simply has longer tables.
    """

    def __init__(self, head_dim: int, max_positions: int, theta: float = 10000.0):
        super().__init__()
        self.head_dim = head_dim
        self.max_positions = self.trained_length = max_positions
        self.theta = float(theta)
        self.scaling = "none"
        cos, sin = self._tables(max_positions)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def set_scaling(self, kind: str, context_length: int) -> None:
        """Read up to ``context_length`` positions with position scaling ``kind`` ('none', 'ntk', 'yarn': module
        docstring) over the length the module was built with (``trained_length``); not cumulative, and 'none' at
        that length restores the built tables. Raises ValueError for an unknown kind or a non-positive length."""
        scaled_frequencies(self.head_dim, self.theta, kind, self.trained_length, context_length)  # validates
        self.scaling, self.max_positions = kind, context_length
        cos, sin = self._tables(context_length, self.cos.device)
        self.cos, self.sin = cos.to(self.cos.dtype), sin.to(self.sin.dtype)

    def _tables(self, length: int, device=None):
        """float64 cos and sin of every (position, channel pair) angle, each of shape (length, head_dim / 2),
        times the scaling's magnitude."""
        # The scaling depends on the length read (max_positions), not on how many rows are asked for.
        frequencies, magnitude = scaled_frequencies(self.head_dim, self.theta, self.scaling, self.trained_length,
                                                    self.max_positions)
        positions = torch.arange(length, dtype=torch.float64, device=device)
        angles = torch.outer(positions, frequencies.to(device))
        return angles.cos() * magnitude, angles.sin() * magnitude

    def extra_repr(self) -> str:
        scaling = "" if self.scaling == "none" and self.max_positions == self.trained_length else (
            f", scaling={self.scaling} from {self.trained_length}")
        return f"head_dim={self.head_dim}, max_positions={self.max_positions}, theta={self.theta:g}{scaling}"

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
