"""RoPE / CoPE text towers as transformers models: outputs equal open_clip's, both loading paths.

The exported modeling code is a separate implementation (hf_code/modeling_relpos_clip.py) of what open_clip_ext's
towers compute (text_tower.py, attention.py, rope.py, cope.py); the open_clip towers are the reference. Weights are
perturbed everywhere (CoPE tables and q/k norms included) so that a wrong mapping shows.
"""
import ast
import json

import pytest
import torch
from transformers import AutoModel, AutoModelForTextEncoding, CLIPVisionModelWithProjection

from open_clip_ext import register_variant
from open_clip_ext.export import export_relpos_text_model
from open_clip_ext.export.hf_code.configuration_relpos_clip import RelPosCLIPTextConfig
from open_clip_ext.export.relpos_hf import AUTO_MAP
from support.export_fixtures import (COPE, ROPE, STOCK, images, make_model, max_diff, run_without_open_clip_ext,
                                     token_ids)

ATOL = 1e-5


def open_clip_outputs(model, ids):
    """text_embeds, last_hidden_state (after ln_final) and every block's output, from open_clip's tower."""
    with torch.no_grad():
        out = model.text.forward_intermediates(ids)
        blocks = out["text_intermediates"]
        return model.encode_text(ids), model.text.ln_final(blocks[-1]), blocks


def assert_outputs_match(hf_out, reference):
    text_embeds, last_hidden, blocks = reference
    assert max_diff(hf_out.text_embeds, text_embeds) < ATOL
    assert max_diff(hf_out.last_hidden_state, last_hidden) < ATOL
    assert len(hf_out.hidden_states) == len(blocks) + 1  # token embeddings first, as transformers' CLIP
    for ours, theirs in zip(hf_out.hidden_states[1:], blocks):
        assert max_diff(ours, theirs) < ATOL


@pytest.fixture(scope="module", params=[ROPE, COPE])
def exported(request, tmp_path_factory):
    model = make_model(request.param)
    directory = export_relpos_text_model(model, tmp_path_factory.mktemp(request.param))
    return model, directory


def test_registered_classes_match_open_clip(exported):
    model, directory = exported
    ids = token_ids()
    hf = AutoModel.from_pretrained(str(directory)).eval()  # no remote code: open_clip_ext registered the classes
    assert type(hf).__module__.startswith("open_clip_ext.")
    with torch.no_grad():
        out = hf(input_ids=ids, output_hidden_states=True)
    assert_outputs_match(out, open_clip_outputs(model, ids))
    # shorter inputs work too (no position table to slice): 77 tokens give the same features as 248
    with torch.no_grad():
        short = hf(input_ids=ids[:3, :77]).text_embeds
    assert max_diff(short, out.text_embeds[:3]) < ATOL


def test_text_encoder_class_outputs_hidden_states_first(exported):
    """AutoModelForTextEncoding gives the projection-free model, whose output[0] is the token sequence (what
    diffusers' SDXL pipeline expects of its first text encoder)."""
    model, directory = exported
    ids = token_ids()[:2]
    encoder = AutoModelForTextEncoding.from_pretrained(str(directory)).eval()
    with torch.no_grad():
        out = encoder(ids, output_hidden_states=True)
    assert out[0].shape == (2, 248, 64)
    assert max_diff(out.hidden_states[-2], open_clip_outputs(model, ids)[2][-2]) < ATOL


def test_config_and_code_in_the_directory(exported):
    model, directory = exported
    config = json.loads((directory / "config.json").read_text())
    assert config["auto_map"] == AUTO_MAP
    assert config["position_type"] == model.text.position
    for name in ("configuration_relpos_clip.py", "modeling_relpos_clip.py"):
        tree = ast.parse((directory / name).read_text())
        roots = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for alias in node.names}
        roots |= {node.module.split(".")[0] for node in ast.walk(tree)
                  if isinstance(node, ast.ImportFrom) and node.level == 0}
        assert roots <= {"torch", "transformers", "dataclasses", "typing", "math"}, (name, roots)


def test_image_tower_is_a_standard_clip_vision_model(exported):
    model, directory = exported
    vision = CLIPVisionModelWithProjection.from_pretrained(str(directory / "vision")).eval()
    pixels = images()
    with torch.no_grad():
        assert max_diff(vision(pixel_values=pixels).image_embeds, model.encode_image(pixels)) < ATOL


def test_ntk_rope_exports_its_effective_theta(tmp_path):
    """A dynamic-NTK tower rotates with a rescaled base; the export must carry that base, not the nominal one."""
    name = register_variant(STOCK, "rope", 248, name="tiny-clip-rope-ntk-export-test", rope_ntk_factor=2.0)
    model = make_model(name)
    assert model.text.rope_theta > 2 * 10000.0
    export_relpos_text_model(model, tmp_path, tokenizer=False, vision=False)
    assert json.loads((tmp_path / "config.json").read_text())["rope_theta"] == pytest.approx(model.text.rope_theta)
    ids = token_ids()
    with torch.no_grad():
        out = AutoModel.from_pretrained(str(tmp_path)).eval()(input_ids=ids, output_hidden_states=True)
    assert_outputs_match(out, open_clip_outputs(model, ids))


def test_config_refuses_unknown_position_type():
    with pytest.raises(ValueError, match="position_type"):
        RelPosCLIPTextConfig(position_type="alibi")


@pytest.mark.slow
def test_remote_code_loads_where_open_clip_ext_is_not_installed(exported, tmp_path):
    """trust_remote_code=True in a fresh interpreter that cannot import open_clip_ext: the copied files suffice."""
    model, directory = exported
    ids = token_ids()
    torch.save(ids, tmp_path / "ids.pt")
    script = f"""
import torch
from transformers import AutoModel
model = AutoModel.from_pretrained({str(directory)!r}, trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
with torch.no_grad():
    out = model(input_ids=torch.load({str(tmp_path / 'ids.pt')!r}), output_hidden_states=True)
torch.save({{"text_embeds": out.text_embeds, "last_hidden_state": out.last_hidden_state,
            "hidden_states": out.hidden_states}}, {str(tmp_path / 'out.pt')!r})
"""
    result = run_without_open_clip_ext(script)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = torch.load(tmp_path / "out.pt")
    out = type("Out", (), saved)
    assert_outputs_match(out, open_clip_outputs(model, ids))
