"""Memory-lean CoPE attention: the pure-PyTorch op (``cope_torch``, the default everywhere), the opt-in Triton kernels
(``cope_triton``) and the choice between them (``dispatch``)."""
from .cope_torch import CoPEAttentionFunction, cope_attention

__all__ = ["CoPEAttentionFunction", "cope_attention"]
