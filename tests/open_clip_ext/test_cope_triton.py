"""The Triton CoPE kernels, run in Triton's CPU interpreter against the PyTorch Function; triton stays optional.

``TRITON_INTERPRET=1`` must be set before the kernels are defined, so each check runs in a fresh interpreter.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _run(code: str, **env) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            cwd=ROOT, env={**os.environ, **env}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


INTERPRETED = """
    import json
    import torch
    from open_clip_ext.kernels import cope_triton
    from open_clip_ext.kernels.cope_torch import CoPEAttentionFunction
    assert cope_triton.interpreting()
    torch.set_num_threads(1)
    report = {}
    for name, (batch, heads, length, dim, npos, boost) in {
            "ragged": (2, 2, 21, 8, 24, 0.0),      # L not a multiple of the row block, n > L
            "saturated": (1, 2, 18, 16, 18, 2.0),  # gates ~1: positions hit n - 1 and integers
    }.items():
        g = torch.Generator().manual_seed(0)
        q, k, v = [torch.randn(batch, heads, length, dim, generator=g) for _ in range(3)]
        q, k = q + boost, k + boost
        table = torch.randn(dim, npos, generator=g)
        weight = 0.1 * torch.randn(batch, heads, length, dim, generator=g)  # gradients of order 1
        results = []
        for fn in (cope_triton.CoPETritonFunction, CoPEAttentionFunction):
            leaves = [t.clone().requires_grad_() for t in (q, k, v, table)]
            out = fn.apply(*leaves, 0.4)
            (out * weight).sum().backward()
            results.append([out.detach()] + [t.grad for t in leaves])
        report[name] = [(a - b).abs().max().item() for a, b in zip(*results)]
        report[name + "_scale"] = [b.abs().max().item() for b in results[1]]
    print(json.dumps(report))
"""


@pytest.mark.slow
def test_triton_kernels_match_pytorch_function_in_interpreter():
    pytest.importorskip("triton")
    report = json.loads(_run(INTERPRETED, TRITON_INTERPRET="1").strip().splitlines()[-1])
    for name in ("ragged", "saturated"):
        # output, dq, dk, dv, dtable
        assert max(report[name]) <= 1e-5, report
        assert min(report[name + "_scale"]) > 1e-2  # every compared tensor is non-trivial


@pytest.mark.slow  # a fresh interpreter importing torch and open_clip
def test_package_imports_and_runs_cope_without_triton():
    code = """
        import sys
        class NoTriton:
            def find_spec(self, name, path=None, target=None):
                if name == "triton" or name.startswith("triton."):
                    raise ModuleNotFoundError("No module named triton")
        sys.meta_path.insert(0, NoTriton())
        import open_clip, torch
        import open_clip_ext
        from open_clip_ext.kernels import cope_triton
        assert cope_triton.triton is None and not cope_triton.triton_available(torch.zeros(1, 1, 4, 4))
        model = open_clip.create_model("tiny-clip-cope-248")
        ids = open_clip.get_tokenizer("tiny-clip-cope-248")(["a caption"])
        model.encode_text(ids).sum().backward()
        print("triton" in sys.modules)
    """
    assert _run(code).strip().splitlines()[-1] == "False"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
def test_triton_kernels_match_pytorch_function_on_gpu(dtype, atol):
    pytest.importorskip("triton")
    from open_clip_ext.kernels.cope_torch import CoPEAttentionFunction
    from open_clip_ext.kernels.cope_triton import CoPETritonFunction

    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = [torch.randn(4, 8, 248, 64, device="cuda", generator=g) for _ in range(3)]
    table = torch.randn(64, 248, device="cuda", generator=g)
    weight = 0.1 * torch.randn(4, 8, 248, 64, device="cuda", generator=g)
    results = []
    for fn in (CoPETritonFunction, CoPEAttentionFunction):
        leaves = [t.to(dtype).requires_grad_() for t in (q, k, v, table)]
        out = fn.apply(*leaves, 0.125)
        (out.float() * weight).sum().backward()
        results.append([out.detach().float()] + [t.grad.float() for t in leaves])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=0, atol=atol * max(1.0, want.abs().max().item()))
