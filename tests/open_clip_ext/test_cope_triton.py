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


# CPU tensors stand in for CUDA ones here (the interpreter runs the kernels on them), so this is the dispatch rule
# end to end: a tower left at the default never reaches the kernels; asked by name or environment, it does.
TOWER_DISPATCH = """
    import json, os
    import open_clip, torch
    import open_clip_ext
    from open_clip_ext.kernels import cope_triton
    assert cope_triton.interpreting()
    torch.set_num_threads(1)
    calls = []

    class Counting(cope_triton.CoPETritonFunction):
        @classmethod
        def apply(cls, *args):
            calls.append(1)
            return super().apply(*args)

    cope_triton.CoPETritonFunction = Counting
    torch.manual_seed(0)
    text = open_clip.create_model("tiny-clip-cope-248").text
    with torch.no_grad():
        for name, p in text.named_parameters():
            if name.endswith("pos_emb"):
                p.normal_(0, 0.5)  # zero tables would leave the positional part untested
    text.last_block_at_pooled_rows = False  # both layers on the square path
    ids = open_clip.get_tokenizer("tiny-clip-cope-248")(["a red circle on a blue square", "two cats"])[:, :12]
    report = {}
    default = text(ids).detach()
    report["default"] = len(calls)
    text.set_cope_impl("triton")
    asked = text(ids).detach()
    report["asked"] = len(calls)
    text.set_cope_impl("function")
    os.environ["OPEN_CLIP_EXT_COPE_IMPL"] = "triton"
    from_env = text(ids).detach()
    report["env"] = len(calls)
    report["diff"] = max((asked - default).abs().max().item(), (from_env - default).abs().max().item())
    report["scale"] = default.abs().max().item()
    print(json.dumps(report))
"""


@pytest.mark.slow
def test_tower_reaches_triton_kernels_only_when_asked_in_interpreter(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.delenv("OPEN_CLIP_EXT_COPE_IMPL", raising=False)
    report = json.loads(_run(TOWER_DISPATCH, TRITON_INTERPRET="1").strip().splitlines()[-1])
    assert (report["default"], report["asked"], report["env"]) == (0, 2, 4), report  # two layers per forward
    assert report["diff"] <= 1e-5 and report["scale"] > 1e-2, report


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
        model = open_clip.create_model("tiny-clip-cope-248")
        ids = open_clip.get_tokenizer("tiny-clip-cope-248")(["a caption"])
        model.encode_text(ids).sum().backward()
        print("triton" in sys.modules)  # the default path never imports it
        from open_clip_ext.kernels import cope_triton, dispatch
        assert cope_triton.triton is None and "Triton does not import" in dispatch.triton_problem("cuda")
        try:
            model.text.set_cope_impl("triton")
        except RuntimeError as error:
            assert "install the triton release" in str(error), error
        else:
            raise AssertionError("set_cope_impl('triton') accepted a machine without Triton")
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
