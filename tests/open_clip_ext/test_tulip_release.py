"""TULIP's released checkpoints through open_clip.create_model: both towers as TULIP computes them.

The checkpoints are rebuilt in TULIP's exact stage-2 layout at tiny-clip size (tests/support/tulip_release.py);
the references are open_clip's stock CLIP for the image tower and the naive float64 text forward.
"""
import open_clip
import pytest
import torch
from open_clip.model import CustomTextCLIP
from open_clip.transformer import QuickGELU
from torch import nn

from open_clip_ext import CheckpointError
from open_clip_ext.configs import TULIP_EVAL_SCRIPT_SUFFIX
from support.tulip_release import (reference_image_features, reference_text_features,
                                   save_tulip_release, tiny_tulip_configs, tiny_tulip_names,  # noqa: F401 (fixture)
                                   tulip_stage2_state_dict)

# 5, 32 and 102 tokens: the last runs past CLIP's 77 positions; short enough for the naive loops.
CAPTIONS = ["a red square", "a blue circle to the left of a green triangle, under a yellow star " * 2,
            "stripes and dots, " * 25]
ATOL = 1e-5  # fp32 model against float64 / fp32 references

pytestmark = pytest.mark.usefixtures("tiny_tulip_configs")


def _images(n=3, seed=5):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _encode(model, images, ids):
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(ids)


def _activation(tower):
    return {type(m) for m in tower.modules() if isinstance(m, (QuickGELU, nn.GELU))}


@pytest.mark.parametrize("ddp", [False, True], ids=["single", "module-prefix"])
@pytest.mark.parametrize("position", ["rope", "cope"])
def test_release_layout_gives_tulip_embeddings(tmp_path, position, ddp):
    """As trained: QuickGELU image tower, GELU text tower, both equal to TULIP's computation."""
    state = tulip_stage2_state_dict(position)
    path = save_tulip_release(tmp_path / "epoch_1.pt", state, ddp)
    name, _ = tiny_tulip_names(position)
    model = open_clip.create_model(name, pretrained=path).eval()
    assert _activation(model.visual) == {QuickGELU} and _activation(model.text) == {nn.GELU}
    ids = open_clip.get_tokenizer(name)(CAPTIONS)
    images = _images()
    image, text = _encode(model, images, ids)
    image_diff = (image - reference_image_features(state, images, quick_gelu=True)).abs().max().item()
    text_diff = (text.double() - reference_text_features(state, ids, position)).abs().max().item()
    print(f"\n{position} ddp={ddp}: max abs diff image {image_diff:.2e}, text {text_diff:.2e}")
    assert image_diff <= ATOL and text_diff <= ATOL


@pytest.mark.parametrize("position", ["rope", "cope"])
def test_eval_script_config_gives_eval_tulip_image_embeddings(tmp_path, position):
    """`-evalscript`: the GELU image tower eval_tulip.py builds from the stock config; text as trained."""
    state = tulip_stage2_state_dict(position)
    path = save_tulip_release(tmp_path / "epoch_1.pt", state, ddp=True)
    trained_name, eval_name = tiny_tulip_names(position)
    model = open_clip.create_model(eval_name, pretrained=path).eval()
    assert _activation(model.visual) == {nn.GELU} and _activation(model.text) == {nn.GELU}
    ids = open_clip.get_tokenizer(eval_name)(CAPTIONS)
    images = _images()
    image, text = _encode(model, images, ids)
    eval_script_image = reference_image_features(state, images, quick_gelu=False)
    image_diff = (image - eval_script_image).abs().max().item()
    print(f"\n{position} evalscript: max abs diff image {image_diff:.2e}")
    assert image_diff <= ATOL
    trained_image, trained_text = _encode(open_clip.create_model(trained_name, pretrained=path).eval(), images, ids)
    assert torch.equal(text, trained_text)
    # The two choices are different computations on the same weights.
    assert (trained_image - image).abs().max() > 20 * ATOL


def test_cope_release_with_other_table_length_names_the_fix(tmp_path):
    """TULIP's CoPE stage 2 sizes its tables by --extended-context-length; 231 loads at force_context_length=231."""
    state = tulip_stage2_state_dict("cope", table_length=231)
    path = save_tulip_release(tmp_path / "epoch_1.pt", state, ddp=True)
    name, _ = tiny_tulip_names("cope")
    with pytest.raises(CheckpointError, match=r"hold 231 positions.*force_context_length=231.*context_length=231"):
        open_clip.create_model(name, pretrained=path)
    model = open_clip.create_model(name, pretrained=path, force_context_length=231).eval()
    ids = open_clip.get_tokenizer(name, context_length=231)(CAPTIONS)
    assert ids.shape[1] == 231
    image, text = _encode(model, _images(), ids)
    text_diff = (text.double() - reference_text_features(state, ids, "cope")).abs().max().item()
    image_diff = (image - reference_image_features(state, _images(), quick_gelu=True)).abs().max().item()
    print(f"\ncope tables 231: max abs diff image {image_diff:.2e}, text {text_diff:.2e}")
    assert image_diff <= ATOL and text_diff <= ATOL


@pytest.mark.parametrize("base", ["ViT-B-16", "ViT-L-14", "ViT-L-14-336"])
@pytest.mark.parametrize("position", ["rope", "cope"])
def test_shipped_tulip_configs_name_each_towers_activation(base, position):
    name = f"TULIP-{base}-{position}-248"
    trained, eval_script = open_clip.get_model_config(name), open_clip.get_model_config(name + TULIP_EVAL_SCRIPT_SUFFIX)
    assert "quick_gelu" not in trained and "quick_gelu" not in eval_script
    assert trained["vision_cfg"]["quick_gelu"] is True and trained["text_cfg"]["quick_gelu"] is False
    assert eval_script["vision_cfg"]["quick_gelu"] is False and eval_script["text_cfg"]["quick_gelu"] is False
    eval_script["vision_cfg"]["quick_gelu"] = True
    assert eval_script == trained
    assert trained["text_cfg"]["rope_ntk_factor" if position == "rope" else "cope_scale"] in (None, "tulip")
    if base == "ViT-L-14":
        cfg = dict(trained)
        cfg.pop("custom_text")
        with torch.device("meta"):  # full size, no memory
            model = CustomTextCLIP(**cfg)
        assert _activation(model.visual) == {QuickGELU} and _activation(model.text) == {nn.GELU}
