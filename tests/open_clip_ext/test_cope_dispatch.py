"""Which CoPE attention runs: on CUDA the PyTorch op unless the Triton kernels are asked for (set_cope_impl,
OPEN_CLIP_EXT_COPE_IMPL), a Triton request that cannot run is an error naming the fix, and the first forward logs
the choice. The decision is a function of the device type, so CUDA is judged here without a GPU; the kernels
themselves run in tests/open_clip_ext/test_cope_triton.py (interpreter) and tests/test_gpu.py."""
import logging

import open_clip
import pytest
import torch

from open_clip_ext.kernels import dispatch
from open_clip_ext.kernels.cope_torch import cope_attention
from open_clip_ext.kernels.dispatch import ENV_VAR, choose_cope_kernel

needs_triton = pytest.mark.skipif(dispatch.triton_problem() is not None, reason="Triton does not import")


@pytest.fixture(autouse=True)
def _no_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # it would let CPU tensors count as Triton-capable


def test_cuda_default_is_the_pytorch_op_and_names_the_opt_ins():
    for environ in ({}, {ENV_VAR: ""}, {ENV_VAR: "torch"}):
        kernel, why = choose_cope_kernel("function", "cuda", 248, environ=environ)
        assert kernel == "torch"
    kernel, why = choose_cope_kernel("function", "cuda", 248, environ={})
    assert "default" in why and "set_cope_impl('triton')" in why and f"{ENV_VAR}=triton" in why \
        and "--cope-impl triton" in why
    assert choose_cope_kernel("function", "cpu", 248, environ={}) == ("torch", "the default")
    # an explicit choice wins over the environment
    assert choose_cope_kernel("torch", "cuda", 248, environ={ENV_VAR: "triton"}) == ("torch", "set_cope_impl('torch')")
    assert choose_cope_kernel("autograd", "cuda", 248, environ={ENV_VAR: "triton"})[0] == "autograd"


@needs_triton
def test_cuda_runs_triton_when_asked_by_name_or_environment():
    assert choose_cope_kernel("triton", "cuda", 248, environ={}) == ("triton", "set_cope_impl('triton')")
    assert choose_cope_kernel("triton", "cuda", 512, environ={}, source="--cope-impl triton") == \
        ("triton", "--cope-impl triton")
    assert choose_cope_kernel("function", "cuda", 248, environ={ENV_VAR: " triton "}) == \
        ("triton", f"{ENV_VAR}=triton")


@needs_triton
def test_triton_where_it_cannot_run_is_an_error_naming_the_fix():
    with pytest.raises(RuntimeError, match=r"set_cope_impl\('triton'\): .*CUDA only, not on cpu; use the PyTorch op"):
        choose_cope_kernel("triton", "cpu", 248, environ={})
    with pytest.raises(RuntimeError, match=rf"{ENV_VAR}=triton: .*up to 512 keys, got 600"):
        choose_cope_kernel("function", "cuda", 600, environ={ENV_VAR: "triton"})
    g = torch.Generator().manual_seed(0)
    q, k, v = [torch.randn(1, 2, 6, 4, generator=g) for _ in range(3)]
    with pytest.raises(RuntimeError, match="CUDA only, not on cpu"):
        cope_attention(q, k, v, torch.randn(4, 6, generator=g), 0.5, impl="triton")


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match=rf"{ENV_VAR}='flash': expected one of torch, triton"):
        choose_cope_kernel("function", "cuda", 248, environ={ENV_VAR: "flash"})
    with pytest.raises(ValueError, match="cope_impl must be one of"):
        choose_cope_kernel("flash", "cuda", 248, environ={})
    q = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match="'autograd' is CoPE.forward"):
        cope_attention(q, q, q, torch.zeros(4, 4), 0.5, impl="autograd")


def test_first_forward_logs_the_kernel_and_why_once(monkeypatch, caplog):
    monkeypatch.setattr(dispatch, "_announced", set())
    monkeypatch.delenv(ENV_VAR, raising=False)
    model = open_clip.create_model("tiny-clip-cope-248")
    ids = open_clip.get_tokenizer("tiny-clip-cope-248")(["a caption", "another caption"])
    with caplog.at_level(logging.INFO, logger=dispatch.__name__):
        model.encode_text(ids)
        model.encode_text(ids)
    lines = [r.getMessage() for r in caplog.records if r.name == dispatch.__name__]
    assert lines == ["CoPE attention: the PyTorch op open_clip_ext::cope_attention in kernels/cope_torch.py "
                     "(the default)"]
    assert all(r.levelno == logging.INFO for r in caplog.records if r.name == dispatch.__name__)
