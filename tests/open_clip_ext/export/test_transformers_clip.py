"""Absolute-position models <-> transformers CLIPModel directories.

Reference values are the open_clip models' own outputs: transformers' CLIP (modeling_clip.py) is an independent
implementation of the same computation, so equality to 1e-5 checks the weight mapping, the merged Long-CLIP table
and the activation per tower.
"""
import json
import warnings

import pytest
import torch
from open_clip.transformer import QuickGELU
from safetensors.torch import load_file, save_file
from transformers import CLIPModel, CLIPProcessor, CLIPTextModelWithProjection

from open_clip_ext.export import ExportError, UnfinetunedPositionsWarning, export_clip, import_clip
from open_clip_ext.export.__main__ import main as export_main
from open_clip_ext.export.transformers_clip import stretch_residual
from open_clip_ext.longclip import stretch_positions
from support.export_fixtures import (COPE, KEEP, LONGCLIP, ROPE, STOCK, UNIFORM, images, make_model, max_diff,
                                     stretched_stock, token_ids)

ATOL = 1e-5


def hf_embeddings(directory, ids, pixels):
    model = CLIPModel.from_pretrained(str(directory)).eval()
    with torch.no_grad():
        text, image = model.get_text_features(input_ids=ids), model.get_image_features(pixel_values=pixels)
    # transformers 5 returns an output object with the projected features as pooler_output, 4.x the tensor
    return tuple(x if torch.is_tensor(x) else x.pooler_output for x in (text, image))


def open_clip_embeddings(model, ids, pixels):
    with torch.no_grad():
        return model.encode_text(ids), model.encode_image(pixels)


@pytest.mark.parametrize("name", [STOCK, LONGCLIP, UNIFORM])
def test_exported_clip_model_matches_open_clip(tmp_path, name):
    model = make_model(name)
    context = model.context_length
    ids, pixels = token_ids(context), images()
    export_clip(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["text_config"]["max_position_embeddings"] == context
    assert config["text_config"]["hidden_act"] == config["vision_config"]["hidden_act"] == "gelu"
    text, image = hf_embeddings(tmp_path, ids, pixels)
    ref_text, ref_image = open_clip_embeddings(model, ids, pixels)
    assert max_diff(text, ref_text) < ATOL
    assert max_diff(image, ref_image) < ATOL
    # the text-only class used by diffusers loads the same directory and gives the same embeddings
    with torch.no_grad():
        text_only = CLIPTextModelWithProjection.from_pretrained(str(tmp_path)).eval()(input_ids=ids).text_embeds
    assert max_diff(text_only, ref_text) < ATOL


def test_longclip_export_merges_the_table_the_tower_adds(tmp_path):
    model = make_model(LONGCLIP)  # both tables perturbed independently: rows differ everywhere
    tower = model.text
    assert not torch.allclose(tower.positional_embedding[KEEP:], tower.positional_embedding_res[KEEP:])
    export_clip(model, tmp_path, tokenizer=False)
    table = load_file(str(tmp_path / "model.safetensors"))["text_model.embeddings.position_embedding.weight"]
    assert torch.equal(table[:KEEP], tower.positional_embedding[:KEEP])
    assert torch.equal(table[KEEP:], tower.positional_embedding_res[KEEP:])


def test_activation_is_read_per_tower(tmp_path):
    """QuickGELU in the text tower only: each tower's hidden_act follows its own modules, outputs still match."""
    model = make_model(STOCK)
    for block in model.transformer.resblocks:
        block.mlp.gelu = QuickGELU()
    ids, pixels = token_ids(77), images()
    export_clip(model, tmp_path, tokenizer=False)
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["text_config"]["hidden_act"], config["vision_config"]["hidden_act"]) == ("quick_gelu", "gelu")
    text, image = hf_embeddings(tmp_path, ids, pixels)
    ref_text, ref_image = open_clip_embeddings(model, ids, pixels)
    assert max_diff(text, ref_text) < ATOL and max_diff(image, ref_image) < ATOL
    imported, cfg = import_clip(tmp_path)  # back with per-tower activation keys
    assert (cfg["vision_cfg"]["quick_gelu"], cfg["text_cfg"]["quick_gelu"]) == (False, True)
    for ours, reference in zip(open_clip_embeddings(imported, ids, pixels), (ref_text, ref_image)):
        assert max_diff(ours, reference) < ATOL


def test_quick_gelu_model_exports_quick_gelu(tmp_path):
    model = make_model(LONGCLIP, force_quick_gelu=True)
    export_clip(model, tmp_path, tokenizer=False)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["text_config"]["hidden_act"] == config["vision_config"]["hidden_act"] == "quick_gelu"
    ids, pixels = token_ids(), images()
    text, image = hf_embeddings(tmp_path, ids, pixels)
    ref_text, ref_image = open_clip_embeddings(model, ids, pixels)
    assert max_diff(text, ref_text) < ATOL and max_diff(image, ref_image) < ATOL


@pytest.mark.parametrize("name", [STOCK, LONGCLIP])
def test_import_round_trip(tmp_path, name):
    model = make_model(name)
    export_clip(model, tmp_path, tokenizer=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnfinetunedPositionsWarning)  # fine-tuned (perturbed) rows: no warning
        imported, cfg = import_clip(tmp_path)
    assert cfg["text_cfg"]["context_length"] == model.context_length
    ids, pixels = token_ids(model.context_length), images()
    for ours, reference in zip(open_clip_embeddings(imported, ids, pixels), open_clip_embeddings(model, ids, pixels)):
        assert max_diff(ours, reference) < ATOL


def test_import_warns_about_a_conversion_that_copied_only_the_first_longclip_table(tmp_path):
    model = stretched_stock(make_model(STOCK))
    with torch.no_grad():  # "fine-tuning": the trained rows differ from the stretch
        model.text.positional_embedding_res[KEEP:] += 0.01 * torch.randn(248 - KEEP, 64)
    export_clip(model, tmp_path, tokenizer=False)
    # the wild conversion: position_embedding <- positional_embedding (frozen, an exact stretch of 77 rows)
    weights = load_file(str(tmp_path / "model.safetensors"))
    weights["text_model.embeddings.position_embedding.weight"] = model.text.positional_embedding.clone()
    save_file(weights, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.warns(UnfinetunedPositionsWarning, match="copied only positional_embedding"):
        import_clip(tmp_path)


def test_stretch_residual_separates_exact_stretches_from_trained_tables():
    table = torch.randn(77, 64) * 0.02
    stretched = stretch_positions(table, 248)
    assert stretch_residual(stretched) < 4 * torch.finfo(torch.float32).eps
    trained = stretched.clone()
    trained[KEEP:] += 1e-5 * torch.randn(248 - KEEP, 64)  # far smaller than a real fine-tuning update
    assert stretch_residual(trained) > 1e-4
    assert stretch_residual(torch.randn(248, 64)) > 0.1


@pytest.mark.parametrize("name", [ROPE, COPE])
def test_relative_position_models_are_refused_with_the_right_exporter_named(tmp_path, name):
    with pytest.raises(ExportError, match="export_relpos_text_model"):
        export_clip(make_model(name), tmp_path)


def test_a_tower_pooled_at_another_tokenizers_end_id_is_refused(tmp_path):
    """MetaCLIP 2's towers pool at ``</s>`` (id 2 in XLM-V): transformers' CLIP is CLIP's vocabulary by construction."""
    import open_clip
    from open_clip_ext.configs import register_model_config

    cfg = open_clip.get_model_config(STOCK)
    cfg["text_cfg"].update(pool_type="eos", eos_id=2)
    register_model_config("tiny-clip-eos-2-export-test", cfg)
    try:
        model = open_clip.create_model("tiny-clip-eos-2-export-test")
    finally:
        open_clip.factory._MODEL_CONFIGS.pop("tiny-clip-eos-2-export-test")
    with pytest.raises(ExportError, match="eos_id 2.*a tower of another tokenizer cannot be exported as CLIP"):
        export_clip(model, tmp_path)


def test_exported_processor_carries_model_preprocessing(tmp_path):
    model = make_model(LONGCLIP)
    export_clip(model, tmp_path)
    processor = CLIPProcessor.from_pretrained(str(tmp_path))
    assert processor.tokenizer.model_max_length == 248
    assert processor.image_processor.crop_size == {"height": 32, "width": 32}
    assert processor.image_processor.image_mean == pytest.approx(list(model.visual.image_mean))


def test_import_names_the_file_of_a_non_clip_directory(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ExportError, match="config.json.*'bert'"):
        import_clip(tmp_path)


def test_cli_derives_a_variant_and_writes_a_loadable_directory(tmp_path):
    export_main(["transformers", "--model", "tiny-clip-longclip-96", "--output", str(tmp_path), "--no-tokenizer"])
    assert CLIPModel.from_pretrained(str(tmp_path)).config.text_config.max_position_embeddings == 96
