"""The CoPE paths under torch.compile (inductor, CPU): same numbers as eager, and no out-of-range table read."""
import open_clip
import pytest
import torch

from open_clip_ext.kernels.cope_torch import cope_attention
from support.naive_towers import randomize_
from support.tower_grads import features_and_grads

pytestmark = pytest.mark.slow  # inductor compiles C++: tens of seconds per graph on a small CPU


@pytest.mark.parametrize("impl", ["function", "autograd"])
def test_compiled_cope_tower_matches_eager(impl):
    torch._dynamo.reset()
    model = randomize_(open_clip.create_model("tiny-clip-cope-248"), scale=0.3)
    text = model.text
    text.set_cope_impl(impl)
    ids = open_clip.get_tokenizer("tiny-clip-cope-248")(["a red circle on a blue square " * 6, "two cats"])[:, :64]
    eager, eager_grads = features_and_grads(text, ids)
    compiled, compiled_grads = features_and_grads(torch.compile(text, backend="inductor", fullgraph=True), ids)
    compiled_grads = {name.removeprefix("_orig_mod."): grad for name, grad in compiled_grads.items()}
    torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-5)
    assert compiled_grads.keys() == eager_grads.keys() and len(eager_grads) > 10
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=0, atol=1e-5, msg=name)


def test_compiled_cope_attention_keeps_nan_rows_in_range():
    """NaN logits give NaN positions; compiled code checks gather indices and would raise on a bad one."""
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    q, k, v = [torch.randn(2, 2, 12, 8, generator=g) for _ in range(3)]
    table = torch.randn(1, 8, 12, generator=g)
    q[0, 1, 5] = float("nan")
    compiled = torch.compile(cope_attention, backend="inductor", fullgraph=True)
    out = compiled(q, k, v, table, 0.5)
    assert torch.isnan(out[0, 1, 5]).all()
    finite = torch.ones(2, 2, 12, dtype=torch.bool)
    finite[0, 1, 5] = False
    assert torch.isfinite(out[finite]).all()
    torch.testing.assert_close(out[finite], cope_attention(q, k, v, table, 0.5)[finite], rtol=0, atol=1e-5)
