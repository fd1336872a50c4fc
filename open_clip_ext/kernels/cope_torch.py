"""Memory-lean CoPE attention in pure PyTorch: a ``torch.autograd.Function`` that recomputes in backward.

Contextual Position Encoding (Golovneva et al. 2024, arXiv 2405.18719) in TULIP's form (arXiv 2410.10034,
github.com/ivonajdenkoska/tulip). For one head, queries q (L, d), keys k, values v and the table E (d, n):

    S = s * q k^T, causally masked (-inf above the diagonal)     G = sigmoid(S)
    P[i, j] = clamp(sum_{k >= j} G[i, k], 0, n - 1)               T = q E            (L, n)
    C[i, j] = T[i, floor P] + (P - floor P) * (T[i, ceil P] - T[i, floor P])
    A = softmax(S + C)                                            out = A v

Autograd on these ops saves about ten (B, H, L, L) tensors; this Function saves q, k, v, E and the output and
rebuilds the (B, H, L, L) chain in backward (FlashAttention's trade: one more S and T product per step for
O(L^2) less memory). On CPU that costs no time: fewer, larger in-place passes make up for the recomputation.

Keys are processed in reverse order (k and v flipped, O(L d) copies) so that the suffix sum over keys becomes
a plain cumsum along the last dim: flipping the (B, H, L, L) gates instead costs two full copies per call.
"""
from typing import List, Tuple

import torch

from ..cope import clamp_positions_, compiling, cumsum_exact, suffix_sum
from .dispatch import announce, choose_cope_kernel


def _reversed_causal_bias(seq_len: int, dtype: torch.dtype, device) -> torch.Tensor:
    """(L, L): -inf where key j' (reversed order: original key L-1-j') lies after query i, else 0."""
    idx = torch.arange(seq_len, device=device)
    future = (idx[:, None] + idx[None, :]) < seq_len - 1
    return torch.zeros(seq_len, seq_len, dtype=dtype, device=device).masked_fill_(future, float("-inf"))


def _positional_chain(q, k_rev, table, logit_scale):
    """The recomputable part of the forward, keys reversed: S + C and what backward needs of it.

    Returns scores S + C (B, H, L, L) in float32 or wider (masked keys -inf), the gates G, floor positions ``lo``
    (int64, in [0, n-1]), their fractional parts ``frac``, the gathered slopes T[lo + 1] - T[lo] (0 past the
    table's end) and the table logits T = q E (B, H, L, n).
    """
    chain = torch.promote_types(q.dtype, torch.float32)  # as the autograd path under autocast
    batch, heads, seq_len, head_dim = q.shape
    # The causal mask rides on the product as an additive bias: no separate (B, H, L, L) masking pass.
    scores = torch.baddbmm(_reversed_causal_bias(seq_len, q.dtype, q.device),
                           (q * logit_scale).reshape(-1, seq_len, head_dim),
                           k_rev.reshape(-1, seq_len, head_dim).transpose(1, 2))
    scores = scores.view(batch, heads, seq_len, seq_len).to(chain)
    gates = torch.sigmoid(scores)
    positions = clamp_positions_(cumsum_exact(gates), table.shape[-1])
    lo = positions.long()  # truncation is floor: positions are >= 0 after clamping
    frac = positions.frac_()
    at_int = torch.matmul(q, table).to(chain)  # (B, H, L, n)
    slopes = at_int.roll(-1, dims=-1).sub_(at_int)  # T[m + 1] - T[m]; the wrapped last column is zeroed
    slopes[..., -1] = 0
    slope = slopes.gather(-1, lo)
    scores.add_(at_int.gather(-1, lo).addcmul_(frac, slope))
    return scores, gates, lo, frac, slope, at_int


def cope_attention_forward(query, key, value, table, logit_scale: float) -> torch.Tensor:
    """Forward of ``CoPEAttentionFunction`` without autograd: (B, H, L, d) -> (B, H, L, d) in value's dtype."""
    with torch.autocast(query.device.type, enabled=False):
        scores = _positional_chain(query, key.flip(-2), table, logit_scale)[0]
        # Backward recomputes the softmax instead of keeping its row statistics: on CPU one softmax is cheaper
        # than the logsumexp that would replace it.
        return torch.matmul(torch.softmax(scores, dim=-1).to(value.dtype), value.flip(-2))


def cope_attention_backward(query, key, value, table, out, grad_out, logit_scale: float):
    """Gradients (query, key, value, table) from the saved inputs, the output and its gradient."""
    with torch.autocast(query.device.type, enabled=False):
        return _cope_attention_backward(query, key, value, table, out, grad_out, logit_scale)


class CoPEAttentionFunction(torch.autograd.Function):
    """softmax(s q k^T + CoPE(q, E), causal) v with O(B H L d) saved tensors.

    forward(query, key, value, table, logit_scale):
        query, key, value: (B, H, L, d), one floating dtype (matmuls run in it; the gate/position/softmax chain
        in float32 or wider); table: (d, n) with n >= L, same dtype; logit_scale: float.
        Returns (B, H, L, d) in value's dtype. Autocast is switched off inside: the caller casts.
    Gradients flow to query, key, value and table; equal (to rounding) to autograd through ``CoPE.forward``.
    ``cope_attention`` runs the same code as an opaque custom op where torch has ``torch.library.custom_op``.
    """

    @staticmethod
    def forward(ctx, query, key, value, table, logit_scale: float):
        out = cope_attention_forward(query, key, value, table, logit_scale)
        ctx.save_for_backward(query, key, value, table, out)
        ctx.logit_scale = logit_scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        return (*cope_attention_backward(*ctx.saved_tensors, grad_out, ctx.logit_scale), None)


def _cope_attention_backward(q, k, v, table, out, grad_out, logit_scale) -> Tuple[torch.Tensor, ...]:
    k_rev, v_rev = k.flip(-2), v.flip(-2)
    scores, gates, lo, frac, slope, at_int = _positional_chain(q, k_rev, table, logit_scale)
    probs = torch.softmax(scores, dim=-1)
    del scores
    chain = probs.dtype
    grad_out = grad_out.to(v.dtype)
    grad_v = torch.matmul(probs.to(v.dtype).transpose(-1, -2), grad_out).flip(-2)
    # Softmax backward with the row term sum_j A_ij dA_ij written as dO_i . O_i: no (B, H, L, L) reduction.
    row = (grad_out.to(chain) * out.to(chain)).sum(-1, keepdim=True)
    grad_scores = torch.matmul(grad_out, v_rev.transpose(-1, -2)).to(chain).sub_(row).mul_(probs)
    del probs
    # Into the positions: the autograd path interpolates between floor and ceil, whose slope is 0 at an
    # integer position (ceil == floor), so the slope is zeroed there to give the same gradient.
    grad_pos = slope.masked_fill_(frac == 0, 0.0).mul_(grad_scores)
    # Into the table logits through C = T[lo] + frac * (T[lo + 1] - T[lo]): scatters over the table axis.
    grad_slopes = torch.zeros_like(at_int).scatter_add_(-1, lo, frac.mul_(grad_scores))
    grad_at_int = torch.zeros_like(at_int).scatter_add_(-1, lo, grad_scores)
    grad_at_int[..., 1:] += grad_slopes[..., :-1]
    grad_at_int[..., :-1] -= grad_slopes[..., :-1]
    del lo, frac, grad_slopes
    # Keys are reversed, so P' = cumsum(G') and dG' is the suffix sum of dP'.
    grad_gates = suffix_sum(grad_pos)
    del grad_pos
    grad_scores += torch.ops.aten.sigmoid_backward(grad_gates, gates)
    del grad_gates, gates
    grad_scores = grad_scores.to(q.dtype)
    grad_at_int = grad_at_int.to(q.dtype)
    grad_q = torch.matmul(grad_scores, k_rev).mul_(logit_scale)
    grad_q += torch.matmul(grad_at_int, table.transpose(-1, -2))
    grad_k = torch.matmul(grad_scores.transpose(-1, -2), q * logit_scale).flip(-2)
    grad_table = torch.matmul(q.reshape(-1, q.shape[-1]).transpose(0, 1), grad_at_int.reshape(-1, table.shape[-1]))
    return grad_q, grad_k, grad_v, grad_table


def _autocast_dtype(device_type: str):
    """The autocast dtype active for ``device_type``, or None (device-typed API since torch 2.4)."""
    try:
        return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
    except (AttributeError, TypeError):
        if device_type == "cuda":
            return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None
        return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None


def _define_custom_op():
    """``open_clip_ext::cope_attention``: the Function above as one opaque op (torch >= 2.4), else None.

    Traced through, the Function's forward and backward land in one joint graph whose partitioner may keep the
    (B, H, L, L) intermediates for backward (measured: 2x the stock tower's saved activations under
    torch.compile). An opaque op saves exactly what ``setup_context`` says, compiled or not.
    """
    custom_op = getattr(torch.library, "custom_op", None)
    if custom_op is None:
        return None

    @custom_op("open_clip_ext::cope_attention", mutates_args=())
    def forward_op(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, table: torch.Tensor,
                   logit_scale: float) -> torch.Tensor:
        return cope_attention_forward(query, key, value, table, logit_scale)

    @forward_op.register_fake
    def _(query, key, value, table, logit_scale):
        return value.new_empty(value.shape)  # contiguous, as the product that makes it

    @custom_op("open_clip_ext::cope_attention_backward", mutates_args=())
    def backward_op(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, table: torch.Tensor,
                    out: torch.Tensor, grad_out: torch.Tensor, logit_scale: float) -> List[torch.Tensor]:
        return list(cope_attention_backward(query, key, value, table, out, grad_out, logit_scale))

    @backward_op.register_fake
    def _(query, key, value, table, out, grad_out, logit_scale):
        return [t.new_empty(t.shape) for t in (query, key, value, table)]

    def setup_context(ctx, inputs, output):
        query, key, value, table, logit_scale = inputs
        ctx.save_for_backward(query, key, value, table, output)
        ctx.logit_scale = logit_scale

    def backward(ctx, grad_out):
        return (*backward_op(*ctx.saved_tensors, grad_out, ctx.logit_scale), None)

    forward_op.register_autograd(backward, setup_context=setup_context)
    return forward_op


cope_attention_op = _define_custom_op()


def cope_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, table: torch.Tensor,
                   logit_scale: float, impl: str = "function") -> torch.Tensor:
    """Causal CoPE attention (see module docstring), memory-lean; (B, H, L, d) -> (B, H, L, d).

    ``table`` is the CoPE ``pos_emb`` (1, d, n) or (d, n); L <= n is the caller's check. Under autocast the
    products run in the autocast dtype, as they would op by op. ``impl``: "function" (default: this module's op
    unless ``OPEN_CLIP_EXT_COPE_IMPL=triton``), "torch" (this module's op) or "triton" (the fused Triton kernels;
    CUDA only, opt-in until they pass a GPU check); see ``kernels/dispatch.py``. Under torch.compile this module's
    code always runs, as one opaque op (see ``_define_custom_op``). The first eager call per kernel logs which
    runs. Raises ValueError / RuntimeError when ``impl`` is unknown or Triton cannot run here.
    """
    dtype = _autocast_dtype(query.device.type) or value.dtype
    table = table.reshape(table.shape[-2], table.shape[-1])
    args = (query.to(dtype), key.to(dtype), value.to(dtype), table.to(dtype), float(logit_scale))
    if impl == "autograd":
        raise ValueError("cope_attention runs 'function', 'torch' or 'triton'; 'autograd' is CoPE.forward")
    if not compiling():  # compiled code runs the op; logging or reading the environment there would break graphs
        kernel, why = choose_cope_kernel(impl, query.device.type, query.shape[-2])
        announce(kernel, why)
        if kernel == "triton":
            from . import cope_triton  # imported only when asked for: default runs never load Triton

            return cope_triton.CoPETritonFunction.apply(*args)
    if cope_attention_op is not None:
        return cope_attention_op(*args)
    return CoPEAttentionFunction.apply(*args)
