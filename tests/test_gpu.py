"""Checks that need a CUDA GPU; skipped on machines without one (CI's included). ``make gpu-check`` runs them.

The RoPE tower must run on SDPA's fused kernels (flash, memory-efficient), not only the math fallback; bf16
autocast must agree with fp32; both stages must train under amp_bf16, and under fp16 amp the GradScaler's state
must survive a checkpoint and ``--resume latest``. CoPE on CUDA runs the PyTorch op unless the fused Triton kernels
are asked for, and asked for they must match it (they become the default only once these checks pass).
"""
import math
import os
from contextlib import contextmanager, nullcontext

# cuBLAS reads this when it first starts: deterministic GEMM workspaces for the resume comparison below.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import open_clip
import pytest
import torch
import torch.nn.functional as F

import open_clip_ext
from training_ext import main_context_finetune_rope, main_distill_rope
from support.training_helpers import STUDENT, TEACHER, base_args, checkpoint_state, long_caption, save_stock_teacher, write_csv

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


def _captions(count=8):
    return [long_caption(i, sentences=3 + 3 * (i % 4)) for i in range(count)]  # ~30 to ~200 tokens


@pytest.mark.parametrize("backend", ["FLASH_ATTENTION", "EFFICIENT_ATTENTION"])
def test_rope_tower_runs_on_fused_sdpa_kernels(backend):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = open_clip.create_model("ViT-B-16-rope-248", device=CUDA)
    ids = open_clip.get_tokenizer("ViT-B-16-rope-248")(_captions()).to(CUDA)
    with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]):
        reference = model.encode_text(ids).float()
    model.zero_grad(set_to_none=True)
    # Restricting SDPA to one fused backend raises if the inputs (a mask, a layout) rule that backend out.
    with sdpa_kernel([getattr(SDPBackend, backend)]), torch.autocast("cuda", dtype=torch.bfloat16):
        fused = model.encode_text(ids)
    fused.float().pow(2).sum().backward()
    assert fused.dtype == torch.bfloat16
    assert F.cosine_similarity(fused.float(), reference, dim=-1).min() > 0.999
    grads = [p.grad for p in model.text.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", ["ViT-B-16-rope-248", "ViT-B-16-cope-248"])
def test_bf16_autocast_agrees_with_fp32(name):
    model = open_clip.create_model(name, device=CUDA).eval()
    ids = open_clip.get_tokenizer(name)(_captions()).to(CUDA)
    with torch.no_grad():
        fp32 = model.encode_text(ids)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = model.encode_text(ids).float()
    assert F.cosine_similarity(bf16, fp32, dim=-1).min() > 0.99


def test_both_stages_train_under_amp_bf16(tmp_path):
    teacher = save_stock_teacher(str(tmp_path / "teacher.pt"))
    train = write_csv(str(tmp_path / "train"), rows=32)
    stage1 = main_distill_rope.run(main_distill_rope.parse_args(
        ["--model", STUDENT, "--teacher-model", TEACHER, "--teacher-pretrained", teacher, "--pretrained", teacher]
        + base_args(str(tmp_path / "logs"), "s1", train, batch_size=8, epochs=2, device="cuda",
                    precision="amp_bf16")))
    assert next(stage1.model.parameters()).device.type == "cuda"
    first_epoch = checkpoint_state(str(tmp_path / "logs" / "s1" / "checkpoints" / "epoch_1.pt"))["state_dict"]
    student_checkpoint = str(tmp_path / "logs" / "s1" / "checkpoints" / "epoch_2.pt")
    final = checkpoint_state(student_checkpoint)["state_dict"]
    assert not torch.equal(first_epoch["text.token_embedding.weight"], final["text.token_embedding.weight"])
    assert all(torch.isfinite(v).all() for v in final.values() if v.is_floating_point())

    stage2 = main_context_finetune_rope.run(main_context_finetune_rope.parse_args(
        ["--model", STUDENT, "--pretrained", teacher, "--student-checkpoint", student_checkpoint]
        + base_args(str(tmp_path / "logs"), "s2", train, batch_size=8, device="cuda", precision="amp_bf16")))
    loaded = open_clip.create_model(STUDENT, pretrained=str(tmp_path / "logs" / "s2" / "checkpoints" / "epoch_1.pt"),
                                    device=CUDA).eval()
    stage2.model.eval()
    ids = open_clip.get_tokenizer(STUDENT)(_captions(4)).to(CUDA)
    with torch.no_grad():
        assert torch.equal(loaded.encode_text(ids), stage2.model.encode_text(ids))


@contextmanager
def deterministic():
    """Bit-reproducible CUDA runs: fused SDPA kernels accumulate in a varying order in backward (under Adam a
    near-zero gradient of either sign moves a weight by a whole learning rate), so use the math kernel."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.use_deterministic_algorithms(True)
    try:
        with sdpa_kernel([SDPBackend.MATH]):
            yield
    finally:
        torch.use_deterministic_algorithms(False)


def test_fp16_amp_scaler_state_survives_resume(tmp_path):
    teacher = save_stock_teacher(str(tmp_path / "teacher.pt"))
    train = write_csv(str(tmp_path / "train"), rows=16, images=False)

    def argv(name, epochs):
        # a constant schedule: the 1-epoch run must see the learning rates of the 2-epoch run's first epoch
        return (["--model", STUDENT, "--teacher-model", TEACHER, "--teacher-pretrained", teacher,
                 "--lr-scheduler", "const"]
                + base_args(str(tmp_path / "logs"), name, train, batch_size=4, epochs=epochs, device="cuda",
                            precision="amp"))

    with deterministic():
        main_distill_rope.run(main_distill_rope.parse_args(argv("run", 1)))
        saved = checkpoint_state(str(tmp_path / "logs" / "run" / "checkpoints" / "epoch_1.pt"))
        untouched = torch.amp.GradScaler("cuda").state_dict()
        assert saved["scaler"] != untouched  # four steps either grew the tracker or changed the scale
        resumed = main_distill_rope.run(main_distill_rope.parse_args(argv("run", 2) + ["--resume", "latest"]))
        uninterrupted = main_distill_rope.run(main_distill_rope.parse_args(argv("ref", 2)))
    assert resumed.scaler.state_dict() == uninterrupted.scaler.state_dict()
    for key, value in resumed.model.state_dict().items():
        torch.testing.assert_close(value, uninterrupted.model.state_dict()[key], atol=1e-6, rtol=1e-5,
                                   msg=lambda m: f"{key}: {m}")
    assert math.isfinite(resumed.scaler.get_scale())


@pytest.mark.parametrize("impl,atol", [("triton", 1e-4), ("torch", 1e-5)])
def test_compiled_cope_tower_matches_eager_on_gpu(impl, atol):
    """Compiled CoPE used to gather outside its table on a GPU (device-side asserts, then a CUDA error). Compiled
    runs the PyTorch custom op; eager "triton" runs the Triton kernels (hence the looser fp32 bound, as in
    tests/open_clip_ext/test_cope_triton.py), eager "torch" the same PyTorch code."""
    from support.naive_towers import randomize_
    from support.tower_grads import features_and_grads

    if impl == "triton":
        pytest.importorskip("triton")
    torch._dynamo.reset()
    text = randomize_(open_clip.create_model("tiny-clip-cope-248"), scale=0.3).to(CUDA).text
    text.set_cope_impl(impl)
    ids = open_clip.get_tokenizer("tiny-clip-cope-248")(_captions()).to(CUDA)
    eager, eager_grads = features_and_grads(text, ids)
    compiled, compiled_grads = features_and_grads(torch.compile(text, fullgraph=True), ids)
    compiled_grads = {name.removeprefix("_orig_mod."): grad for name, grad in compiled_grads.items()}
    torch.testing.assert_close(compiled, eager, rtol=0, atol=atol)
    assert compiled_grads.keys() == eager_grads.keys()
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=0, atol=atol, msg=name)


@pytest.mark.parametrize("precision,atol", [("fp32", 1e-4), ("bf16", 5e-2)])
def test_cope_tower_reaches_triton_only_when_asked_and_matches_the_op(precision, atol, monkeypatch):
    """On CUDA a CoPE tower left at its default runs the PyTorch op; set_cope_impl('triton') runs the fused kernels
    in every layer, with the op's features and gradients at ViT-B-16 text size, L = 248 (two layers: the bound is
    per layer; bf16 autocast gets bf16's bound, as tests/open_clip_ext/test_cope_triton.py)."""
    pytest.importorskip("triton")
    from open_clip_ext.kernels import cope_triton
    from open_clip_ext.towers import build_relpos_text_tower
    from support.naive_towers import randomize_
    from support.tower_grads import features_and_grads

    monkeypatch.delenv("OPEN_CLIP_EXT_COPE_IMPL", raising=False)
    calls = []

    class Counting(cope_triton.CoPETritonFunction):
        @classmethod
        def apply(cls, *args):
            calls.append(args[0].shape)
            return super().apply(*args)

    monkeypatch.setattr(cope_triton, "CoPETritonFunction", Counting)
    text_cfg = dict(open_clip_ext.derive_config("ViT-B-16", "cope", 248)["text_cfg"], layers=2)
    text = randomize_(build_relpos_text_tower(512, text_cfg), scale=0.3).to(CUDA)
    text.last_block_at_pooled_rows = False  # both layers on the square (B, H, L, L) path
    ids = open_clip.get_tokenizer("ViT-B-16-cope-248")(_captions()).to(CUDA)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if precision == "bf16" else nullcontext
    results = {}
    for impl in ("function", "triton"):
        text.set_cope_impl(impl)
        with autocast():
            features, grads = features_and_grads(text, ids)
        results[impl] = [features.float()] + [g.float() for g in grads.values()]
        assert len(calls) == (0 if impl == "function" else 2), calls
    assert all(shape[-2] == 248 for shape in calls)
    for got, want in zip(results["triton"], results["function"]):
        torch.testing.assert_close(got, want, rtol=0, atol=atol * max(1.0, want.abs().max().item()))
