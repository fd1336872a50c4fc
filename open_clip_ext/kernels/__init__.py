"""Fused CoPE attention: the pure-PyTorch autograd Function (``cope_torch``) and optional Triton kernels."""
from .cope_torch import CoPEAttentionFunction, cope_attention

__all__ = ["CoPEAttentionFunction", "cope_attention"]
