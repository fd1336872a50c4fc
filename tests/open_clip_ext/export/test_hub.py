"""open_clip's Hub format: a real round trip through ``local-dir:``, and ``push_to_hub`` / ``hf-hub:`` with the
huggingface_hub network calls replaced by a folder (the network boundary)."""
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import open_clip
import open_clip.pretrained
import pytest
import torch
from huggingface_hub import ModelCard
from open_clip.transformer import QuickGELU

import huggingface_hub
from open_clip_ext.export import ExportError, push_to_hub, save_open_clip_dir
from open_clip_ext.export.__main__ import main as export_main
from open_clip_ext.text_tower import RelPosTextTransformer
from support.export_fixtures import COPE, LONGCLIP, ROPE, images, make_model, token_ids

RESULTS = {
    "models": [],
    "results": [{"model": "tiny-rope:ckpt.pt", "model_name": ROPE, "checkpoint": "ckpt.pt", "context_length": 248,
                 "benchmark": "urban1k", "protocol": "Urban1k retrieval, 1000 images",
                 "metrics": {"image_to_text_R@1": 87.25, "text_to_image_R@1": 84.5}}],
}


def assert_same_model(a, b, context_length):
    ids, pixels = token_ids(context_length), images()
    with torch.no_grad():
        assert torch.equal(a.encode_text(ids), b.encode_text(ids))
        assert torch.equal(a.encode_image(pixels), b.encode_image(pixels))


@pytest.mark.parametrize("name", [ROPE, COPE, LONGCLIP])
def test_local_dir_round_trip_keeps_the_position_config(tmp_path, name):
    model = make_model(name)
    save_open_clip_dir(model, tmp_path, model_name=name)
    saved = json.loads((tmp_path / "open_clip_config.json").read_text())["model_cfg"]
    assert saved["custom_text"] is True
    assert saved["text_cfg"] == open_clip.get_model_config(name)["text_cfg"]  # pos_embed_type and its options
    loaded = open_clip.create_model(f"local-dir:{tmp_path}").eval()
    assert type(loaded.text) is type(model.text)
    assert_same_model(loaded, model, 248)
    assert open_clip.get_tokenizer(f"local-dir:{tmp_path}")(["a cat"]).shape == (1, 248)


def fake_hub(monkeypatch, root: Path):
    """Replace the Hub with a folder: create_repo / upload_folder write to it, hf_hub_download reads from it."""
    calls = {}

    def create_repo(repo_id, **kwargs):
        calls["create_repo"] = kwargs
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(repo_id, folder_path, **kwargs):
        calls["upload_folder"] = kwargs
        shutil.copytree(folder_path, root / repo_id, dirs_exist_ok=True)
        return SimpleNamespace(oid="0" * 40)

    def hf_hub_download(repo_id, filename, **kwargs):
        path = root / repo_id / filename
        if not path.is_file():
            raise FileNotFoundError(path)
        return str(path)

    monkeypatch.setattr(huggingface_hub, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub, "upload_folder", upload_folder)
    monkeypatch.setattr(open_clip.pretrained, "hf_hub_download", hf_hub_download)
    return calls


def test_push_and_load_through_the_hub_api(tmp_path, monkeypatch):
    calls = fake_hub(monkeypatch, tmp_path / "hub")
    results = tmp_path / "results.json"
    results.write_text(json.dumps(RESULTS))
    model = make_model(ROPE)
    push_to_hub(model, "me/tiny-rope", model_name=ROPE, private=True, base="tiny-clip (random init)",
                recipe="stage 1: distill from tiny-clip; stage 2: fine-tune on long captions", results=str(results),
                base_model_id="me/tiny-clip")
    assert calls["create_repo"]["private"] is True
    repo = tmp_path / "hub" / "me" / "tiny-rope"
    assert {"open_clip_config.json", "open_clip_model.safetensors", "README.md"} <= {p.name for p in repo.iterdir()}
    card = ModelCard.load(repo / "README.md")
    assert card.data.library_name == "open_clip" and card.data.base_model == "me/tiny-clip"
    for expected in ("tiny-clip (random init)", "stage 2: fine-tune", "urban1k", "87.25",
                     "hf-hub:me/tiny-rope", '"pos_embed_type": "rope"'):
        assert expected in card.text, expected
    loaded = open_clip.create_model("hf-hub:me/tiny-rope").eval()
    assert isinstance(loaded.text, RelPosTextTransformer)
    assert_same_model(loaded, model, 248)


def test_config_that_does_not_rebuild_the_model_is_refused(tmp_path):
    """A QuickGELU model saved with its name's (GELU) config would load and compute wrongly."""
    model = make_model(ROPE, force_quick_gelu=True)
    with pytest.raises(ExportError, match="activations"):
        save_open_clip_dir(model, tmp_path, model_cfg=open_clip.get_model_config(ROPE))
    save_open_clip_dir(model, tmp_path, model_name=ROPE)  # the name path records quick_gelu
    assert json.loads((tmp_path / "open_clip_config.json").read_text())["model_cfg"]["quick_gelu"] is True
    assert_same_model(open_clip.create_model(f"local-dir:{tmp_path}").eval(), model, 248)


def test_towers_with_different_activations_round_trip(tmp_path):
    """QuickGELU image tower, GELU text tower (TULIP's released weights): saved with per-tower activation keys."""
    model = make_model(ROPE)
    for block in model.visual.transformer.resblocks:
        block.mlp.gelu = QuickGELU()
    save_open_clip_dir(model, tmp_path, model_name=ROPE)
    saved = json.loads((tmp_path / "open_clip_config.json").read_text())["model_cfg"]
    assert (saved["vision_cfg"]["quick_gelu"], saved["text_cfg"]["quick_gelu"]) == (True, False)
    assert_same_model(open_clip.create_model(f"local-dir:{tmp_path}").eval(), model, 248)


def test_results_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "results.json"
    bad.write_text(json.dumps({"results": [{"model": "x"}]}))
    with pytest.raises(ExportError, match=r"results\.json: results\[0\] lacks"):
        save_open_clip_dir(make_model(ROPE), tmp_path / "out", model_name=ROPE, results=str(bad))


def test_cli_writes_an_open_clip_dir(tmp_path):
    export_main(["open-clip", "--model", COPE, "--output", str(tmp_path), "--base", "tiny-clip"])
    assert "tiny-clip" in (tmp_path / "README.md").read_text()
    assert isinstance(open_clip.create_model(f"local-dir:{tmp_path}").text, RelPosTextTransformer)
