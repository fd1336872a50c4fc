"""What open_clip users expect keeps working on the relative-position models."""
import copy
import importlib
import subprocess
import sys

import open_clip
import pytest
import torch

import open_clip_ext
from open_clip_ext import patches
from support.naive_towers import randomize_

NAMES = ["tiny-clip-rope-248", "tiny-clip-cope-248"]
CAPTIONS = ["a green triangle next to a yellow star " * 6, "stripes"]


def _ids(name):
    return open_clip.get_tokenizer(name)(CAPTIONS)


@pytest.mark.parametrize("name", NAMES)
def test_encode_text_normalize_and_tokens(name):
    model = randomize_(open_clip.create_model(name)).eval()
    ids = _ids(name)
    with torch.no_grad():
        features = model.encode_text(ids, normalize=True)
        model.text.output_tokens = True
        pooled, tokens = model.text(ids)
    torch.testing.assert_close(features.norm(dim=-1), torch.ones(2))
    assert tokens.shape == (2, 248, 64)
    eot = ids.argmax(dim=-1)
    torch.testing.assert_close(pooled, tokens[torch.arange(2), eot] @ model.text.text_projection)
    torch.testing.assert_close(torch.nn.functional.normalize(pooled, dim=-1), features)


@pytest.mark.parametrize("name", NAMES)
def test_forward_intermediates(name):
    model = randomize_(open_clip.create_model(name)).eval()
    ids = _ids(name)
    with torch.no_grad():
        out = model.forward_intermediates(text=ids, text_indices=2, normalize=False)
        reference = model.encode_text(ids)
    assert len(out["text_intermediates"]) == 2 and out["text_intermediates"][0].shape == (2, 248, 64)
    torch.testing.assert_close(out["text_features"], reference)


def test_tokenizer_context_and_model_config():
    assert _ids("tiny-clip-rope-248").shape == (2, 248)
    assert open_clip.get_tokenizer("ViT-L-14-rope-248")(["x"]).shape == (1, 248)
    cfg = open_clip.get_model_config("ViT-L-14-cope-248")
    assert cfg["custom_text"] and cfg["text_cfg"]["pos_embed_type"] == "cope"
    assert cfg["text_cfg"]["width"] == open_clip.get_model_config("ViT-L-14")["text_cfg"]["width"]


def test_truncate_tokens_matches_tokenizer_at_77():
    captions = ["word " * 100, "short caption", "word " * 76, "word " * 75]
    long_ids = open_clip.get_tokenizer("tiny-clip-rope-248")(captions)
    short_tokenizer = open_clip.get_tokenizer("tiny-clip")
    short_ids = short_tokenizer(captions)
    assert torch.equal(open_clip_ext.truncate_tokens(long_ids, 77, short_tokenizer.eot_token_id), short_ids)


@pytest.mark.parametrize("name", NAMES)
def test_lock_text_tower(name):
    model = open_clip.create_model(name)
    model.lock_text_tower()
    assert not any(p.requires_grad for p in model.text.parameters())
    assert all(p.requires_grad for p in model.visual.parameters())
    model = open_clip.create_model(name)
    model.lock_text_tower(unlocked_layers=1)
    trainable = {n for n, p in model.text.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("ln_final", "text_projection")) for n in trainable)


@pytest.mark.parametrize("name", NAMES)
def test_grad_checkpointing_gives_equal_gradients(name):
    model = randomize_(open_clip.create_model(name))
    other = copy.deepcopy(model)
    other.set_grad_checkpointing(True)
    assert other.text.transformer.grad_checkpointing
    ids = _ids(name)
    grads = []
    for m in (model, other):
        m.zero_grad()
        m.encode_text(ids).square().sum().backward()
        grads.append({n: p.grad.clone() for n, p in m.text.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for key in grads[0]:
        torch.testing.assert_close(grads[0][key], grads[1][key], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast_runs_close_to_fp32(name):
    model = randomize_(open_clip.create_model(name)).eval()
    ids = _ids(name)
    with torch.no_grad():
        reference = model.encode_text(ids, normalize=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model.encode_text(ids, normalize=True)
    assert low.dtype == torch.bfloat16
    assert torch.nn.functional.cosine_similarity(low.float(), reference).min() > 0.98


def test_pure_bf16_precision_model():
    model = open_clip.create_model("tiny-clip-rope-248", precision="bf16")
    with torch.no_grad():
        features = model.encode_text(_ids("tiny-clip-rope-248"))
    assert torch.isfinite(features.float()).all()


def test_register_variant_of_any_stock_config_at_any_length():
    name = open_clip_ext.register_variant("ViT-B-32", "cope", 512)
    assert name == "ViT-B-32-cope-512"
    cfg = open_clip.get_model_config(name)
    assert cfg["text_cfg"]["context_length"] == 512 and cfg["custom_text"]
    assert "openai" in open_clip.list_pretrained_tags_by_model(name)
    assert open_clip.get_tokenizer(name)(["x"]).shape == (1, 512)
    with pytest.raises(ValueError, match="CoPE is causal only .* \\(text_cfg.no_causal_mask"):
        open_clip_ext.derive_config("ViT-B-16-SigLIP", "cope", 248)
    with pytest.raises(ValueError, match="Hugging Face text tower \\(text_cfg.hf_model_name\\)"):
        open_clip_ext.derive_config("roberta-ViT-B-32", "rope", 248)
    with pytest.raises(RuntimeError, match="Unknown model config"):
        open_clip_ext.register_variant("ViT-B-99", "rope", 248)


@pytest.mark.slow
def test_shipped_configs_are_up_to_date():
    result = subprocess.run([sys.executable, "scripts/make_model_configs.py", "--check"], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_missing_open_clip_internal_is_named(monkeypatch):
    monkeypatch.delattr(open_clip.factory, "load_checkpoint")
    with pytest.raises(ImportError, match=r"open_clip 3\.3\.\d+: open_clip.factory.load_checkpoint"):
        patches.check_open_clip()


def test_patching_is_idempotent():
    before = open_clip.factory.create_model
    importlib.reload(open_clip_ext)
    assert open_clip.factory.create_model is before
