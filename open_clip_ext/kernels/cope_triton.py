"""Fused CoPE attention in Triton, forward and backward, with each query's whole row of keys in one tile.

Same computation as ``cope_torch`` (CoPE, arXiv 2405.18719, in TULIP's form, arXiv 2410.10034): for a block of
query rows the kernel holds S = s q k^T over all L keys, so the suffix sum of the gates along a row is one
in-register scan and nothing (B, H, L, L) reaches memory. The table logits T = q E (B, H, L, n) are one cuBLAS
product outside the kernel, read by index; their gradient is scattered into a (B, H, L, n) buffer with atomics
and turned into dq and dE by two more products. Rows up to ``MAX_LEN`` keys (one tile per row).

Triton is optional: without it (CPU-only installs) ``triton`` is None and nothing here is compiled. The kernels
also run in Triton's interpreter (``TRITON_INTERPRET=1``, CPU tensors), which is how tests check them on CPU.
They have not yet passed a check on a GPU, so they are opt-in (``dispatch.py``; ``make gpu-check`` runs that check).
"""
import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the PyTorch path serves everything
    triton = None

MAX_LEN = 512
BLOCK_M = 16


if triton is not None:
    @triton.jit
    def _row_block_chain(q_ptr, k_ptr, t_ptr, base, t_base, offs_m, offs_n, offs_d, seq_len, head_dim, npos,
                         logit_scale, PRECISION: tl.constexpr):
        """S + C for BLOCK_M query rows against all keys, with what backward needs (see cope_torch)."""
        row_ok = offs_m < seq_len
        q = tl.load(q_ptr + base + offs_m[:, None] * head_dim + offs_d[None, :],
                    mask=row_ok[:, None] & (offs_d[None, :] < head_dim), other=0.0)
        k = tl.load(k_ptr + base + offs_n[:, None] * head_dim + offs_d[None, :],
                    mask=(offs_n[:, None] < seq_len) & (offs_d[None, :] < head_dim), other=0.0)
        scores = tl.dot((q * logit_scale).to(k.dtype), tl.trans(k), input_precision=PRECISION)
        visible = (offs_n[None, :] <= offs_m[:, None]) & (offs_n[None, :] < seq_len) & row_ok[:, None]
        scores = tl.where(visible, scores, float("-inf"))
        gates = tl.where(visible, tl.sigmoid(scores), 0.0)
        # Suffix sum accumulated in float64 and rounded once: positions near n - 1 need it (see cope.cumsum_exact).
        positions = tl.cumsum(gates.to(tl.float64), axis=1, reverse=True).to(tl.float32)
        positions = tl.where(positions == positions, positions, 0.0)  # NaN -> 0: indices stay in range
        positions = tl.minimum(tl.maximum(positions, 0.0), npos - 1.0)
        lo = positions.to(tl.int32)  # floor: positions >= 0
        frac = positions - lo.to(tl.float32)
        hi = tl.minimum(lo + (frac > 0).to(tl.int32), npos - 1)  # ceil, as the PyTorch paths interpolate
        row_ptr = t_ptr + t_base + offs_m[:, None] * npos
        at_lo = tl.load(row_ptr + lo, mask=visible, other=0.0)
        at_hi = tl.load(row_ptr + hi, mask=visible, other=0.0)
        scores = scores + at_lo + frac * (at_hi - at_lo)
        return scores, gates, lo, hi, frac, at_lo, at_hi, visible, q

    @triton.jit
    def _cope_forward_kernel(q_ptr, k_ptr, v_ptr, t_ptr, out_ptr, lse_ptr, seq_len, head_dim, npos, logit_scale,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                             PRECISION: tl.constexpr):
        bh = tl.program_id(1).to(tl.int64)  # offsets past 2**31 for large B * H * L * n
        offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        base = bh * seq_len * head_dim
        scores, _, _, _, _, _, _, _, _ = _row_block_chain(
            q_ptr, k_ptr, t_ptr, base, bh * seq_len * npos, offs_m, offs_n, offs_d, seq_len, head_dim, npos,
            logit_scale, PRECISION)
        row_max = tl.max(scores, axis=1)
        row_max = tl.where(row_max == float("-inf"), 0.0, row_max)  # padding rows (not stored): no inf - inf
        weights = tl.exp(scores - row_max[:, None])
        total = tl.sum(weights, axis=1)
        total = tl.where(total > 0, total, 1.0)
        v_mask = (offs_n[:, None] < seq_len) & (offs_d[None, :] < head_dim)
        v = tl.load(v_ptr + base + offs_n[:, None] * head_dim + offs_d[None, :], mask=v_mask, other=0.0)
        out = tl.dot((weights / total[:, None]).to(v.dtype), v, input_precision=PRECISION)
        row_ok = offs_m < seq_len
        tl.store(out_ptr + base + offs_m[:, None] * head_dim + offs_d[None, :], out,
                 mask=row_ok[:, None] & (offs_d[None, :] < head_dim))
        tl.store(lse_ptr + bh * seq_len + offs_m, row_max + tl.log(total), mask=row_ok)

    @triton.jit
    def _cope_backward_kernel(q_ptr, k_ptr, v_ptr, t_ptr, out_ptr, lse_ptr, dout_ptr, dq_ptr, dk_ptr, dv_ptr,
                              dt_ptr, seq_len, head_dim, npos, logit_scale,
                              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                              PRECISION: tl.constexpr):
        # One program per (batch, head) walks its query blocks in order: every dk/dv element receives one atomic
        # add per block, always in the same order, so the result is deterministic; keys, values and their
        # gradients stay in memory (L2) rather than in registers, which a whole row of keys would overflow.
        bh = tl.program_id(0).to(tl.int64)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        base = bh * seq_len * head_dim
        t_base = bh * seq_len * npos
        kv_offs = base + offs_n[:, None] * head_dim + offs_d[None, :]
        kv_mask = (offs_n[:, None] < seq_len) & (offs_d[None, :] < head_dim)
        for start_m in range(0, seq_len, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M)
            row_ok = offs_m < seq_len
            scores, gates, lo, hi, frac, at_lo, at_hi, visible, q = _row_block_chain(
                q_ptr, k_ptr, t_ptr, base, t_base, offs_m, offs_n, offs_d, seq_len, head_dim, npos,
                logit_scale, PRECISION)
            lse = tl.load(lse_ptr + bh * seq_len + offs_m, mask=row_ok, other=0.0)
            probs = tl.where(visible, tl.exp(scores - lse[:, None]), 0.0)
            md = row_ok[:, None] & (offs_d[None, :] < head_dim)
            row_offs = base + offs_m[:, None] * head_dim + offs_d[None, :]
            dout = tl.load(dout_ptr + row_offs, mask=md, other=0.0)
            out = tl.load(out_ptr + row_offs, mask=md, other=0.0)
            v = tl.load(v_ptr + kv_offs, mask=kv_mask, other=0.0)
            tl.atomic_add(dv_ptr + kv_offs, tl.dot(tl.trans(probs).to(dout.dtype), dout, input_precision=PRECISION),
                          mask=kv_mask)
            row_term = tl.sum(dout.to(tl.float32) * out.to(tl.float32), axis=1)
            grad_scores = probs * (tl.dot(dout, tl.trans(v), input_precision=PRECISION) - row_term[:, None])
            row_ptr = dt_ptr + t_base + offs_m[:, None] * npos
            tl.atomic_add(row_ptr + lo, grad_scores * (1 - frac), mask=visible)
            tl.atomic_add(row_ptr + hi, grad_scores * frac, mask=visible & (frac > 0))
            # dP is zero at integer positions (hi == lo there); dG[k] = sum_{j <= k} dP[j] undoes the suffix sum.
            grad_gates = tl.cumsum(grad_scores * (at_hi - at_lo), axis=1)
            grad_scores = tl.where(visible, grad_scores + grad_gates * gates * (1 - gates), 0.0)
            k = tl.load(k_ptr + kv_offs, mask=kv_mask, other=0.0)
            grad_q = tl.dot(grad_scores.to(k.dtype), k, input_precision=PRECISION) * logit_scale
            tl.store(dq_ptr + row_offs, grad_q, mask=md)
            tl.atomic_add(dk_ptr + kv_offs,
                          tl.dot(tl.trans(grad_scores).to(q.dtype), (q * logit_scale).to(q.dtype),
                                 input_precision=PRECISION),
                          mask=kv_mask)


def _launch_shape(q: torch.Tensor):
    batch, heads, seq_len, head_dim = q.shape
    block_n = max(16, triton.next_power_of_2(seq_len))
    block_d = max(16, triton.next_power_of_2(head_dim))
    return batch * heads, seq_len, head_dim, block_n, block_d


def _warps(block_n: int) -> int:
    # A (16, L) tile per tensor: more warps spread the row over more registers (untuned: no GPU measured yet).
    return 8 if block_n >= 256 else 4


def _precision(q: torch.Tensor) -> str:
    # fp32 products follow torch's own TF32 switch, so the kernel and the PyTorch path agree on precision.
    if q.dtype == torch.float32 and not (q.is_cuda and torch.backends.cuda.matmul.allow_tf32):
        return "ieee"
    return "tf32"


class CoPETritonFunction(torch.autograd.Function):
    """Triton twin of ``cope_torch.CoPEAttentionFunction`` (same arguments, shapes and dtypes).

    Saves q, k, v, the table, the output and the per-row log-sum-exp (B, H, L) float32; L <= MAX_LEN.
    """

    @staticmethod
    def forward(ctx, query, key, value, table, logit_scale: float):
        if query.shape[-2] > MAX_LEN:
            raise ValueError(f"the Triton CoPE kernel holds rows of up to {MAX_LEN} keys, got {query.shape[-2]}")
        query, key, value = query.contiguous(), key.contiguous(), value.contiguous()
        bh, seq_len, head_dim, block_n, block_d = _launch_shape(query)
        npos = table.shape[-1]
        at_int = torch.matmul(query, table).float().contiguous()
        out = torch.empty(query.shape, dtype=torch.float32, device=query.device)
        lse = torch.empty(query.shape[:-1], dtype=torch.float32, device=query.device)
        grid = (triton.cdiv(seq_len, BLOCK_M), bh)
        _cope_forward_kernel[grid](query, key, value, at_int, out, lse, seq_len, head_dim, npos,
                                   float(logit_scale), BLOCK_M=BLOCK_M, BLOCK_N=block_n, BLOCK_D=block_d,
                                   PRECISION=_precision(query), num_warps=_warps(block_n))
        out = out.to(value.dtype)
        ctx.save_for_backward(query, key, value, table, out, lse)
        ctx.logit_scale = float(logit_scale)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        query, key, value, table, out, lse = ctx.saved_tensors
        bh, seq_len, head_dim, block_n, block_d = _launch_shape(query)
        npos = table.shape[-1]
        at_int = torch.matmul(query, table).float().contiguous()
        grad_at_int = torch.zeros_like(at_int)
        grads = [torch.zeros(query.shape, dtype=torch.float32, device=query.device) for _ in range(3)]
        _cope_backward_kernel[(bh,)](query, key, value, at_int, out, lse, grad_out.to(value.dtype).contiguous(),
                                     *grads, grad_at_int, seq_len, head_dim, npos, ctx.logit_scale,
                                     BLOCK_M=BLOCK_M, BLOCK_N=block_n, BLOCK_D=block_d,
                                     PRECISION=_precision(query), num_warps=_warps(block_n))
        grad_q, grad_k, grad_v = grads
        grad_q += torch.matmul(grad_at_int, table.float().transpose(-1, -2))
        grad_table = torch.matmul(query.float().reshape(-1, head_dim).transpose(0, 1), grad_at_int.reshape(-1, npos))
        return (grad_q.to(query.dtype), grad_k.to(key.dtype), grad_v.to(value.dtype), grad_table.to(table.dtype),
                None)


def interpreting() -> bool:
    """Whether Triton runs its CPU interpreter (set TRITON_INTERPRET=1 before this module is imported)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
