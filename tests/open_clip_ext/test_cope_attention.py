"""CoPE attention: the stable suffix sum, the memory-lean autograd Function and the op-by-op path, each against an
independent float64 loop reference (arXiv 2405.18719 as TULIP, arXiv 2410.10034, uses it)."""
import math

import open_clip
import pytest
import torch

import open_clip_ext
from open_clip_ext import cope as cope_module
from open_clip_ext.cope import CoPE, suffix_sum
from open_clip_ext.kernels.cope_torch import CoPEAttentionFunction, cope_attention, cope_attention_op
from support.naive_towers import randomize_
from support.tower_grads import features_and_grads

SEQ = 248


def reference_cope_attention(q, k, v, table, scale):
    """Causal CoPE attention written from the definition, one (batch, head, query) at a time, in q's dtype.

    Every step is a differentiable torch op on scalars/rows so autograd gives the reference gradients.
    """
    batch, heads, length, _ = q.shape
    npos = table.shape[-1]
    rows = []
    for b in range(batch):
        for h in range(heads):
            for i in range(length):
                logits = [scale * torch.dot(q[b, h, i], k[b, h, j]) for j in range(i + 1)]
                gates = [torch.sigmoid(x) for x in logits]
                table_logits = q[b, h, i] @ table  # (npos,)
                scores = []
                for j in range(i + 1):
                    position = sum(gates[j:])  # keys j..i; later keys are masked (gate 0)
                    position = torch.clamp(position, 0, npos - 1)
                    lo, hi = math.floor(position.item()), math.ceil(position.item())
                    frac = position - lo
                    scores.append(logits[j] + table_logits[lo] * (1 - frac) + table_logits[hi] * frac)
                weights = torch.softmax(torch.stack(scores), 0)
                rows.append(weights @ v[b, h, : i + 1])
    return torch.stack(rows).reshape(batch, heads, length, -1)


def autograd_path(q, k, v, table, scale):
    """The op-by-op path of the attention layer, on raw q/k/v (CoPE module + softmax)."""
    length = q.shape[-2]
    cope = CoPE(table.shape[-1], table.shape[0]).to(q.dtype)
    with torch.no_grad():
        cope.pos_emb.copy_(table[None])
    cope.pos_emb.requires_grad_(table.requires_grad)
    logits = torch.matmul(q * scale, k.transpose(-1, -2))
    logits = logits.masked_fill(torch.ones(length, length, dtype=torch.bool).triu(1), float("-inf"))
    out = torch.matmul((logits + cope(q, logits)).softmax(-1), v)
    return out, cope.pos_emb


def _inputs(batch, heads, length, dim, npos, dtype=torch.float32, logit_boost=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, length, dim, generator=g, dtype=torch.float64) + logit_boost
    k = torch.randn(batch, heads, length, dim, generator=g, dtype=torch.float64) + logit_boost
    v = torch.randn(batch, heads, length, dim, generator=g, dtype=torch.float64)
    table = torch.randn(dim, npos, generator=g, dtype=torch.float64)
    return [t.to(dtype).requires_grad_() for t in (q, k, v, table)]


def _grads(out, inputs, weight):
    return [out.detach()] + list(torch.autograd.grad((out * weight).sum(), inputs))


def _max_diff(a, b):
    return max((x.double() - y.double()).abs().max().item() for x, y in zip(a, b))


def test_suffix_sum_stays_within_1e5_of_fp64_with_saturated_gates():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 8, SEQ, SEQ, generator=g) * 6 + 12  # most gates ~1, many exactly 1.0 in fp32
    logits = logits.masked_fill(torch.ones(SEQ, SEQ, dtype=torch.bool).triu(1), float("-inf"))
    gates = torch.sigmoid(logits)
    assert (gates == 1).float().mean() > 0.05  # of all entries, half of them masked
    exact = torch.sigmoid(logits.double())
    reference = torch.stack([exact[..., j:].sum(-1) for j in range(SEQ)], dim=-1)  # no cumsum involved
    assert (suffix_sum(gates).double() - reference).abs().max().item() <= 1e-5
    # The input is one where cancellation shows: total - cumsum + gate (the old formula) drifts past 1e-5.
    cancelling = gates.sum(-1, keepdim=True) - gates.cumsum(-1) + gates
    assert (cancelling.double() - reference).abs().max().item() > 1e-5


def test_float64_accumulation_branch_is_as_accurate(monkeypatch):
    # The branch CUDA and compiled code take (explicit float64 accumulation), exercised on CPU.
    monkeypatch.setattr(cope_module, "compiling", lambda: True)
    gates = torch.sigmoid(torch.randn(2, 3, SEQ, SEQ, generator=torch.Generator().manual_seed(1)) * 4 + 6)
    reference = torch.stack([gates.double()[..., j:].sum(-1) for j in range(SEQ)], dim=-1)
    assert (suffix_sum(gates).double() - reference).abs().max().item() <= 1e-5


@pytest.mark.parametrize("length,npos,boost", [(9, 12, 0.0), (7, 7, 0.0), (8, 8, 3.0), (1, 4, 0.0)])
def test_function_and_autograd_path_match_fp64_reference(length, npos, boost):
    """Outputs and gradients (q, k, v, table): fp32 paths within 1e-5 of each other and of the fp64 loop
    reference; boost=3 saturates gates so positions reach the table's end (clamped) and integer values."""
    inputs32 = _inputs(2, 2, length, 4, npos, logit_boost=boost)
    inputs64 = _inputs(2, 2, length, 4, npos, dtype=torch.float64, logit_boost=boost)
    weight = torch.randn(2, 2, length, 4, generator=torch.Generator().manual_seed(5))
    scale = 0.5
    reference = _grads(reference_cope_attention(*inputs64, scale), inputs64, weight.double())
    function = _grads(cope_attention(*inputs32, scale), inputs32, weight)
    out, pos_emb = autograd_path(*inputs32, scale)
    plain = _grads(out, inputs32[:3] + [pos_emb], weight)
    plain[-1] = plain[-1][0]
    assert _max_diff(function, plain) <= 1e-5
    assert _max_diff(function, reference) <= 1e-5
    assert _max_diff(plain, reference) <= 1e-5
    # In float64 the Function is the reference up to summation order.
    assert _max_diff(_grads(cope_attention(*inputs64, scale), inputs64, weight.double()), reference) <= 1e-10
    if boost:
        assert reference[4].abs().max() > 0  # the table still learns when positions saturate


def test_function_gradcheck_float64():
    inputs = _inputs(1, 2, 6, 3, 8, dtype=torch.float64, seed=3)
    assert torch.autograd.gradcheck(lambda *t: CoPEAttentionFunction.apply(*t, 0.7), inputs)


@pytest.mark.skipif(cope_attention_op is None, reason="torch without torch.library.custom_op")
def test_custom_op_passes_opcheck_and_gradcheck():
    """The op ``cope_attention`` runs: schema, fake (meta) outputs, autograd registration, AOT tracing."""
    inputs = _inputs(1, 2, 6, 3, 8, dtype=torch.float64, seed=4)
    torch.library.opcheck(cope_attention_op, (*inputs, 0.7))
    assert torch.autograd.gradcheck(lambda *t: cope_attention_op(*t, 0.7), inputs)


def test_function_saves_no_length_squared_tensors():
    inputs = _inputs(2, 3, 40, 8, 48)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        out = cope_attention(*inputs, 0.3)
    # q, k, v, the table and the output: nothing of size B*H*L*L (19200 here).
    assert len(saved) == 5 and max(math.prod(shape) for shape in saved) == 2 * 3 * 40 * 8
    out.sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in inputs)


def test_nan_positions_never_index_outside_the_table():
    """A NaN query row makes NaN logits and positions; both paths must still gather in range (an out-of-range
    index raises on CPU) and keep the NaN to that row."""
    q, k, v, table = _inputs(2, 1, 10, 4, 10)
    q = q.detach().clone()
    q[0, 0, 4] = float("nan")
    for out in (cope_attention(q, k, v, table, 0.5), autograd_path(q, k, v, table, 0.5)[0]):
        assert torch.isnan(out[0, 0, 4]).all()
        rows_ok = [i for i in range(10) if i != 4]
        assert torch.isfinite(out[0, 0, rows_ok]).all() and torch.isfinite(out[1]).all()
    clean = cope_attention(*_inputs(2, 1, 10, 4, 10), 0.5)
    torch.testing.assert_close(cope_attention(q, k, v, table, 0.5)[1], clean[1], rtol=0, atol=0)


@pytest.mark.parametrize("cope_scale", ["tulip", "paper"])
def test_tower_function_path_equals_autograd_path(cope_scale):
    cfg = open_clip_ext.derive_config("tiny-clip", "cope", 248, cope_scale=cope_scale)
    name = f"tiny-clip-cope-248-{cope_scale}-test"
    open_clip_ext.configs.register_model_config(name, cfg)
    model = randomize_(open_clip.create_model(name), scale=0.3)
    text = model.text
    text.last_block_at_pooled_rows = False  # every layer on the square path
    ids = open_clip.get_tokenizer(name)(["a red circle on a blue square", "stripes " * 120, "two cats"])
    got = {}
    for impl in ("function", "autograd"):
        text.set_cope_impl(impl)
        features, grads = features_and_grads(text, ids)
        got[impl] = [features] + list(grads.values())
    assert len(got["function"]) == len(got["autograd"]) > 10
    assert _max_diff(got["function"], got["autograd"]) <= 1e-5
    assert got["function"][0].abs().max() > 0.1 and max(g.abs().max() for g in got["function"][1:]) > 0.1


def test_function_path_under_cpu_bf16_autocast_agrees_with_fp32():
    model = randomize_(open_clip.create_model("tiny-clip-cope-248"), scale=0.3)
    ids = open_clip.get_tokenizer("tiny-clip-cope-248")(["a long caption " * 30, "a short one"])
    fp32 = model.encode_text(ids).detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = model.encode_text(ids)
    bf16.float().sum().backward()
    assert torch.nn.functional.cosine_similarity(bf16.float(), fp32, dim=-1).min() > 0.99
    assert all(torch.isfinite(p.grad).all() for p in model.text.parameters() if p.grad is not None)


def test_set_cope_impl_picks_the_path_and_refuses_unknown_names_and_rope_towers():
    text = open_clip.create_model("tiny-clip-cope-248").text
    text.set_cope_impl("torch")
    assert {block.attn.cope_impl for block in text.transformer.resblocks} == {"torch"}
    with pytest.raises(ValueError, match="cope_impl must be one of"):
        open_clip.create_model("tiny-clip-cope-248").text.set_cope_impl("flash")
    with pytest.raises(ValueError, match="needs a CoPE tower"):
        open_clip.create_model("tiny-clip-rope-248").text.set_cope_impl("autograd")
