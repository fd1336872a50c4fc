"""create_model(name, pretrained=...) for every checkpoint source the model side promises to read."""
import argparse
import json

import open_clip
import open_clip.factory
import pytest
import torch
from open_clip.transformer import QuickGELU
from safetensors.torch import save_file

import open_clip_ext
from open_clip_ext import CheckpointError
from support.naive_towers import randomize_

STUDENTS = ["tiny-clip-rope-248", "tiny-clip-cope-248"]


def _features(model, name, captions=("a long caption " * 30, "short one")):
    ids = open_clip.get_tokenizer(name)(list(captions))
    with torch.no_grad():
        return model.encode_text(ids)


@pytest.fixture
def stock_teacher(tmp_path):
    teacher = randomize_(open_clip.create_model("tiny-clip"))
    path = tmp_path / "stock.pt"
    torch.save({"epoch": 3, "name": "teacher", "state_dict": teacher.state_dict()}, path)
    return teacher, path


@pytest.mark.parametrize("name", STUDENTS)
def test_student_takes_every_stock_weight_but_positions(stock_teacher, name):
    teacher, path = stock_teacher
    student = open_clip.create_model(name, pretrained=str(path))
    stock = teacher.state_dict()
    got = student.state_dict()
    copied = 0
    for key, value in stock.items():
        if key in ("positional_embedding", "attn_mask"):
            continue
        target = key if key.startswith(("visual.", "logit_")) else f"text.{key}"
        assert torch.equal(got[target], value), key
        copied += 1
    assert copied == len(stock) - 1
    fresh = [k for k in got if k[len("text."):] in student.text.fresh_init_keys()]
    if name.endswith("cope-248"):
        assert fresh and all(torch.equal(got[k], torch.zeros_like(got[k])) for k in fresh if "pos_emb" in k)
    else:
        assert not fresh


def test_pretrained_tag_resolves_base_weights_and_quickgelu(stock_teacher, monkeypatch):
    """'openai' on a derived config downloads the base model's OpenAI weights and computes with QuickGELU."""
    _, path = stock_teacher
    requested = []

    def fake_download(cfg, *args, **kwargs):
        requested.append(cfg)
        return str(path)

    open_clip.pretrained._PRETRAINED.setdefault("tiny-clip", {})["openai"] = {
        **open_clip.pretrained._PRETRAINED["ViT-B-16"]["openai"]}
    try:
        open_clip_ext.register_variant("tiny-clip", "rope", 248, name="tiny-clip-rope-248-tagged")
        monkeypatch.setattr(open_clip.factory, "download_pretrained", fake_download)
        model = open_clip.create_model("tiny-clip-rope-248-tagged", pretrained="openai")
    finally:
        del open_clip.pretrained._PRETRAINED["tiny-clip"]
        open_clip.pretrained._PRETRAINED.pop("tiny-clip-rope-248-tagged", None)
    assert requested[0]["hf_hub"] == open_clip.pretrained._PRETRAINED["ViT-B-16"]["openai"]["hf_hub"]
    assert isinstance(model.text.transformer.resblocks[0].mlp.gelu, QuickGELU)
    assert isinstance(model.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)


def test_real_base_names_carry_pretrained_tags():
    for base in ("ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336", "ViT-H-14", "ViT-bigG-14"):
        for position in ("rope", "cope"):
            name = f"{base}-{position}-248"
            assert open_clip.get_model_config(name)["text_cfg"]["pos_embed_type"] == position
            assert open_clip.list_pretrained_tags_by_model(name) == open_clip.list_pretrained_tags_by_model(base)
    assert "openai" in open_clip.list_pretrained_tags_by_model("ViT-L-14-rope-248")


def test_hf_hub_name_goes_through_the_hub_download(tmp_path, monkeypatch):
    model = randomize_(open_clip.create_model("tiny-clip-rope-248"))
    (tmp_path / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": open_clip.get_model_config("tiny-clip-rope-248"), "preprocess_cfg": {}}))
    save_file(model.state_dict(), str(tmp_path / "open_clip_model.safetensors"))
    asked = []

    def fake_hf_download(model_id, filename="open_clip_pytorch_model.bin", *args, **kwargs):
        asked.append((model_id, filename))
        if filename.endswith(".json"):
            return str(tmp_path / filename)
        return str(tmp_path / "open_clip_model.safetensors")

    monkeypatch.setattr(open_clip.factory, "download_pretrained_from_hf", fake_hf_download)
    loaded = open_clip.create_model("hf-hub:someone/tiny-rope")
    assert asked[0] == ("someone/tiny-rope", "open_clip_config.json")
    assert all(model_id == "someone/tiny-rope" for model_id, _ in asked)
    torch.testing.assert_close(_features(loaded, "tiny-clip-rope-248"), _features(model, "tiny-clip-rope-248"),
                               rtol=0, atol=0)


@pytest.mark.parametrize("name", STUDENTS)
def test_own_full_checkpoint_round_trip_is_exact(tmp_path, name):
    model = randomize_(open_clip.create_model(name))
    path = tmp_path / "own.pt"
    torch.save({"epoch": 1, "name": name, "state_dict": model.state_dict(),
                "model_cfg": open_clip.get_model_config(name), "optimizer": {"state": {}}}, path)
    loaded = open_clip.create_model(name, pretrained=str(path))
    assert torch.equal(_features(loaded, name), _features(model, name))


def test_own_text_only_checkpoint_keeps_vision(tmp_path, stock_teacher):
    teacher, stock_path = stock_teacher
    trained = randomize_(open_clip.create_model("tiny-clip-rope-248"))
    path = tmp_path / "text_only.pt"
    torch.save({"state_dict": {k: v for k, v in trained.state_dict().items() if k.startswith("text.")}}, path)
    loaded = open_clip.create_model("tiny-clip-rope-248", pretrained=str(path))
    assert torch.equal(_features(loaded, "tiny-clip-rope-248"), _features(trained, "tiny-clip-rope-248"))


@pytest.mark.parametrize("name", STUDENTS)
def test_tulip_release_layout_loads(tmp_path, name):
    """Flat stock-CLIP keys, `module.` prefixes, an unused positional_embedding, under 'state_dict'."""
    model = randomize_(open_clip.create_model(name))
    flat = {}
    for key, value in model.state_dict().items():
        flat["module." + (key[len("text."):] if key.startswith("text.") else key)] = value
    flat["module.positional_embedding"] = torch.randn(248, 64)
    path = tmp_path / "tulip.pt"
    torch.save({"epoch": 30, "state_dict": flat}, path)
    loaded = open_clip.create_model(name, pretrained=str(path))
    assert torch.equal(_features(loaded, name), _features(model, name))


def test_checkpoint_needing_pickle_is_refused(tmp_path):
    model = open_clip.create_model("tiny-clip-rope-248")
    path = tmp_path / "pickled.pt"
    torch.save({"state_dict": model.state_dict(), "args": argparse.Namespace(lr=1.0)}, path)
    with pytest.raises(CheckpointError, match="arbitrary unpickling"):
        open_clip.create_model("tiny-clip-rope-248", pretrained=str(path))


def _saved(tmp_path, state_dict, **extra):
    path = tmp_path / "bad.pt"
    torch.save({"state_dict": state_dict, **extra}, path)
    return str(path)


def test_mismatched_checkpoints_name_keys_and_shapes(tmp_path):
    good = open_clip.create_model("tiny-clip-cope-248").state_dict()
    wrong_width = dict(good, **{"text.ln_final.weight": torch.ones(32)})
    with pytest.raises(CheckpointError, match=r"text\.ln_final\.weight \(32,\) vs model \(64,\)"):
        open_clip.create_model("tiny-clip-cope-248", pretrained=_saved(tmp_path, wrong_width))
    with pytest.raises(CheckpointError, match=r"unexpected keys: text\.surprise"):
        open_clip.create_model("tiny-clip-cope-248", pretrained=_saved(tmp_path, dict(good, **{
            "text.surprise": torch.zeros(1)})))
    with pytest.raises(CheckpointError, match=r"attn\.cope\.pos_emb \(1, 16, 248\) vs model \(1, 16, 300\)"):
        open_clip.create_model("tiny-clip-cope-248", pretrained=_saved(tmp_path, good), force_context_length=300)
    missing = {k: v for k, v in good.items() if "resblocks.1.mlp" not in k}
    with pytest.raises(CheckpointError, match=r"missing keys: .*resblocks\.1\.mlp"):
        open_clip.create_model("tiny-clip-cope-248", pretrained=_saved(tmp_path, missing))
    with pytest.raises(CheckpointError, match="not found"):
        open_clip_ext.read_checkpoint(tmp_path / "nope.pt")


def test_position_settings_mismatch_is_refused(tmp_path):
    model = open_clip.create_model("tiny-clip-rope-248")
    cfg = open_clip_ext.derive_config("tiny-clip", "rope", 248, rope_ntk_factor=4.0)
    path = _saved(tmp_path, model.state_dict(), model_cfg=cfg)
    with pytest.raises(CheckpointError, match="rope_ntk_factor: checkpoint 4.0 vs model None"):
        open_clip.create_model("tiny-clip-rope-248", pretrained=path)


def test_unknown_model_lists_close_matches():
    with pytest.raises(RuntimeError, match="Close matches: .*ViT-B-16-rope-248"):
        open_clip.create_model("ViT-B-16-rope-24")


def test_quick_gelu_comes_from_the_checkpoint(tmp_path):
    """A student trained from OpenAI weights (QuickGELU) reloads by name with QuickGELU, or is refused."""
    trained = randomize_(open_clip.create_model("tiny-clip-rope-248", force_quick_gelu=True))
    cfg = dict(open_clip.get_model_config("tiny-clip-rope-248"), quick_gelu=True)
    path = tmp_path / "quick.pt"
    torch.save({"state_dict": trained.state_dict(), "model_cfg": cfg}, path)
    loaded = open_clip.create_model("tiny-clip-rope-248", pretrained=str(path))
    assert isinstance(loaded.text.transformer.resblocks[0].mlp.gelu, QuickGELU)
    assert torch.equal(_features(loaded, "tiny-clip-rope-248"), _features(trained, "tiny-clip-rope-248"))
    gelu_model = open_clip.create_model("tiny-clip-rope-248")
    with pytest.raises(CheckpointError, match="trained with quick_gelu=True but the model uses quick_gelu=False"):
        open_clip_ext.convert.load_checkpoint_into(gelu_model, path)
