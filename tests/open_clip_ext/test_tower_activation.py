"""Per-tower activation (vision_cfg.quick_gelu / text_cfg.quick_gelu): building, saving, checking on load."""
import logging

import open_clip
import pytest
import torch
from open_clip.model import CLIP, CustomTextCLIP
from open_clip.transformer import QuickGELU
from torch import nn

import open_clip_ext
from open_clip_ext import CheckpointError, patches
from open_clip_ext.configs import register_model_config
from support.naive_towers import randomize_
from support.tulip_release import tiny_tulip_configs, tiny_tulip_names  # noqa: F401 (fixture)

TRAINED, EVAL_SCRIPT = tiny_tulip_names("rope")

pytestmark = pytest.mark.usefixtures("tiny_tulip_configs")


def _quick(tower) -> bool:
    kinds = {type(m) for m in tower.modules() if isinstance(m, (QuickGELU, nn.GELU))}
    assert len(kinds) == 1, kinds
    return kinds == {QuickGELU}


def _text_tower(model):
    return model.text if hasattr(model, "text") else model.transformer


@pytest.mark.parametrize("base", ["tiny-clip", "tiny-clip-rope-248", "tiny-clip-cope-248"])
@pytest.mark.parametrize("model_level", [False, True])
@pytest.mark.parametrize("vision,text", [(None, None), (True, False), (False, True), (False, None)])
def test_tower_key_wins_over_model_level_flag(base, model_level, vision, text):
    cfg = open_clip.get_model_config(base)
    cfg["quick_gelu"] = model_level
    if vision is not None:
        cfg["vision_cfg"]["quick_gelu"] = vision
    if text is not None:
        cfg["text_cfg"]["quick_gelu"] = text
    model_class = CustomTextCLIP if cfg.pop("custom_text", False) else CLIP
    model = model_class(**cfg)
    assert _quick(model.visual) == (model_level if vision is None else vision)
    assert _quick(_text_tower(model)) == (model_level if text is None else text)


def test_create_model_with_tower_keys_on_a_stock_config():
    cfg = open_clip.get_model_config("tiny-clip")
    cfg["vision_cfg"]["quick_gelu"] = True
    register_model_config("tiny-clip-quickgelu-vision-test", cfg)
    try:
        model = open_clip.create_model("tiny-clip-quickgelu-vision-test")
    finally:
        open_clip.factory._MODEL_CONFIGS.pop("tiny-clip-quickgelu-vision-test")
    assert _quick(model.visual) and not _quick(model.transformer)
    assert open_clip.get_model_config("tiny-clip")["vision_cfg"].get("quick_gelu") is None


def test_vision_builder_is_a_checked_patch_point(monkeypatch):
    assert (open_clip.model, "_build_vision_tower") in patches._REQUIRED
    assert open_clip.model._build_vision_tower is patches._build_vision_tower
    monkeypatch.delattr(open_clip.model, "_build_vision_tower")
    with pytest.raises(ImportError, match=r"open_clip.model._build_vision_tower"):
        patches.check_open_clip()


def _save(path, model, cfg, keys=None):
    state = {k: v for k, v in model.state_dict().items() if keys is None or k.startswith(keys)}
    torch.save({"epoch": 1, "state_dict": state, "model_cfg": cfg}, path)
    return str(path)


def test_own_checkpoint_of_a_tower_pinned_config_round_trips(tmp_path):
    """Saved as training_ext does (registered config + model-level quick_gelu=True as any tower uses it)."""
    model = randomize_(open_clip.create_model(TRAINED)).eval()
    cfg = dict(open_clip.get_model_config(TRAINED), quick_gelu=True)
    loaded = open_clip.create_model(TRAINED, pretrained=_save(tmp_path / "own.pt", model, cfg)).eval()
    assert _quick(loaded.visual) and not _quick(loaded.text)
    ids = open_clip.get_tokenizer(TRAINED)(["a caption " * 20])
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(images), model.encode_image(images))
        assert torch.equal(loaded.encode_text(ids), model.encode_text(ids))


def test_saved_tower_activation_that_differs_is_refused(tmp_path):
    gelu_vision = randomize_(open_clip.create_model(EVAL_SCRIPT))
    path = _save(tmp_path / "eval.pt", gelu_vision, open_clip.get_model_config(EVAL_SCRIPT))
    with pytest.raises(CheckpointError, match=r"image tower trained with quick_gelu=False but the model uses "
                                              r"quick_gelu=True\. Create the model with the config it was trained"):
        open_clip.create_model(TRAINED, pretrained=path)
    # A stock variant follows the saved QuickGELU image tower with force_quick_gelu, which then breaks the
    # text tower: refused too, naming the text tower.
    trained = randomize_(open_clip.create_model(TRAINED))
    path = _save(tmp_path / "trained.pt", trained, open_clip.get_model_config(TRAINED))
    with pytest.raises(CheckpointError, match="text tower trained with quick_gelu=False but the model uses "
                                              "quick_gelu=True"):
        open_clip.create_model("tiny-clip-rope-248", pretrained=path)


def test_text_only_checkpoint_checks_only_the_text_activation(tmp_path):
    gelu_vision = randomize_(open_clip.create_model(EVAL_SCRIPT))
    path = _save(tmp_path / "text.pt", gelu_vision, open_clip.get_model_config(EVAL_SCRIPT), keys="text.")
    model = open_clip.create_model(TRAINED, pretrained=path)
    assert _quick(model.visual) and torch.equal(model.text.token_embedding.weight,
                                                gelu_vision.text.token_embedding.weight)


def test_saved_model_level_quick_gelu_is_followed_in_both_towers(tmp_path):
    trained = randomize_(open_clip.create_model("tiny-clip-rope-248", force_quick_gelu=True))
    cfg = dict(open_clip.get_model_config("tiny-clip-rope-248"), quick_gelu=True)
    model = open_clip.create_model("tiny-clip-rope-248", pretrained=_save(tmp_path / "q.pt", trained, cfg))
    assert _quick(model.visual) and _quick(model.text)


def test_force_quick_gelu_keeps_a_towers_own_gelu(caplog):
    with caplog.at_level(logging.WARNING):
        model = open_clip.create_model(TRAINED, force_quick_gelu=True)
    assert _quick(model.visual) and not _quick(model.text)
    assert "force_quick_gelu=True leaves text_cfg on GELU" in caplog.text


def test_pretrained_uses_quick_gelu_reads_every_tower(tmp_path):
    model = open_clip.create_model(TRAINED)
    cfg = open_clip.get_model_config(TRAINED)
    assert "quick_gelu" not in cfg  # only the image tower says QuickGELU
    assert open_clip_ext.convert.pretrained_uses_quick_gelu(TRAINED, _save(tmp_path / "a.pt", model, cfg))
    cfg = open_clip.get_model_config(EVAL_SCRIPT)
    assert not open_clip_ext.convert.pretrained_uses_quick_gelu(EVAL_SCRIPT, _save(tmp_path / "b.pt", model, cfg))
