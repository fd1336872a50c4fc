"""The support table (open_clip_ext.support, scripts/support_table.py, README.md) against the real builders: every
shipped config is classified; each refusal is the one derive_config and the tower builders give; one shrunk
config per supported family builds every supported kind, reads past the base's context and starts from the base's
weights with only the learned positions left behind (a Hugging Face text tower's from a tiny local transformers
model of its type: nothing is downloaded); the export column is what the exporter's checks say."""
import re
from pathlib import Path

import open_clip
import open_clip.model
import pytest
import torch

import open_clip_ext
from open_clip_ext import configs, support
from open_clip_ext.configs import CONTEXT_ONLY, POSITION_TYPES, TOWER_ACTIVATION_KEY, register_model_config
from open_clip_ext.convert import to_custom_text_layout
from open_clip_ext.export.transformers_clip import ExportError, hf_vision_config
from open_clip_ext.towers import build_ext_text_tower
from support.family_configs import representatives, shrunk_config
from support.model_registry import restored_registry  # noqa: F401  (fixture)
from support.naive_towers import randomize_
from training_ext.stages.flags import POSITIONS

README = Path(__file__).resolve().parents[2] / "README.md"
SUPPORTS = support.classify_all()
BASES = [s for s in SUPPORTS if not s.variant]
# learned position tensors a variant does not take from its base (CoPE/Long-CLIP/uniform add or resize their own)
POSITION_KEYS = ("positional_embedding", "attn_mask")


pytestmark = pytest.mark.usefixtures("restored_registry")


def test_every_shipped_config_is_classified_and_derive_config_agrees(monkeypatch):
    # a context variant's limit comes from the transformers config, on the hub for shipped names: here no limit
    # (test_hf_context_variants.py reads real limits from local configs)
    monkeypatch.setattr(configs, "hf_context_limit", lambda name: (None, "not read here"))
    assert [s.name for s in SUPPORTS] == support.shipped_config_names()
    assert len(SUPPORTS) > 150 and {"RN50", "EVA02-B-16", "ViT-B-16-SigLIP", "ViT-L-14-rope-248"} <= \
           {s.name for s in SUPPORTS}
    assert support.STAGE1_KINDS == POSITIONS
    for s in SUPPORTS:
        cfg = open_clip.get_model_config(s.name)
        if s.variant:
            assert s.variant == cfg["text_cfg"]["pos_embed_type"] and not s.kinds and not s.refusals
            continue
        assert sorted(s.kinds + tuple(s.refusals)) == sorted(POSITION_TYPES), s.name
        for kind in POSITION_TYPES:
            length = cfg["text_cfg"].get("context_length", 77) + 1
            if kind in s.kinds:
                open_clip_ext.derive_config(s.name, kind, length)
            else:
                with pytest.raises(ValueError, match=re.escape(s.refusals[kind])):
                    open_clip_ext.derive_config(s.name, kind, length)


def test_refused_text_towers_are_refused_by_the_tower_builder_with_the_same_reason():
    refused = [s for s in BASES if s.refusals]
    assert {s.family for s in refused} >= {"SigLIP", "SigLIP2", "CLIPA", "CoCa", "NLLB-CLIP", "MobileCLIP"}
    assert {s.family for s in BASES if CONTEXT_ONLY in s.kinds} == {"NLLB-CLIP",
                                                                   "Hugging Face text (mT5, RoBERTa, XLM-R)"}
    for s in refused:
        cfg = open_clip.get_model_config(s.name)
        for kind, reason in s.refusals.items():
            if "multimodal_cfg" in reason:  # CoCa builds its text tower itself: only derive_config sees it
                continue
            text_cfg = dict(cfg["text_cfg"], pos_embed_type=kind)
            with pytest.raises(ValueError, match=re.escape(reason)):
                build_ext_text_tower(cfg["embed_dim"], text_cfg)


def _long_ids(text_cfg: dict, length: int) -> torch.Tensor:
    """(1, length) ids ending in the token the tower pools at: the end id (eos pooling) or the largest id."""
    ids = torch.randint(3, 598, (1, length), generator=torch.Generator().manual_seed(0))
    ids[0, -1] = text_cfg["eos_id"] if text_cfg.get("pool_type") == "eos" else 599
    return ids


REPRESENTATIVES = representatives(BASES)


@pytest.mark.parametrize("family", sorted(REPRESENTATIVES))
def test_a_shrunk_representative_of_each_supported_family_builds_every_kind_from_its_base(family, tmp_path):
    s = REPRESENTATIVES[family]
    base = f"support-test-{s.name}"
    register_model_config(base, shrunk_config(open_clip.get_model_config(s.name), tmp_path / "hf"))
    stock = randomize_(open_clip.create_model(base))
    # the config's, which the tokenizer reads (open_clip's HF tower reports max_position_embeddings instead)
    context = open_clip.get_model_config(base)["text_cfg"].get("context_length", 77)
    path = tmp_path / "base.pt"
    torch.save({"state_dict": stock.state_dict()}, path)
    stock_text = {k: v for k, v in to_custom_text_layout(stock.state_dict()).items()
                  if k.startswith("text.") and not k.endswith(POSITION_KEYS)}
    for kind in s.kinds:
        length = context + 40
        variant = open_clip.create_model(f"{base}-{kind}-{length}", pretrained=str(path)).eval()
        got = to_custom_text_layout(variant.state_dict())
        for key, value in stock_text.items():
            assert torch.equal(got[key], value), (family, kind, key)
        fresh = {f"text.{k}" for k in getattr(getattr(variant, "text", None), "fresh_init_keys", tuple)()}
        added = {k for k in got if k.startswith("text.")} - set(stock_text) - fresh
        assert all(k.endswith(POSITION_KEYS + ("positional_embedding_res",)) for k in added), added
        ids = _long_ids(open_clip.get_model_config(base)["text_cfg"], length)
        changed = ids.clone()
        changed[0, context + 10] = 5 if ids[0, context + 10] != 5 else 6  # past the base's last position
        with torch.no_grad():
            features, other = variant.encode_text(ids), variant.encode_text(changed)
        assert features.shape == (1, stock.text_projection.shape[-1] if hasattr(stock, "text_projection")
                                  else features.shape[-1]) and torch.isfinite(features).all()
        assert not torch.allclose(features, other), (family, kind)  # the token past the base's context counts


def _shrunk_vision(vision_cfg: dict) -> dict:
    vision_cfg = {k: v for k, v in vision_cfg.items() if k != TOWER_ACTIVATION_KEY}
    if isinstance(vision_cfg.get("layers"), (list, tuple)):
        return dict(vision_cfg, layers=[1, 1, 1, 1], width=8, image_size=64)
    return dict(vision_cfg, layers=1, width=64, head_width=32)


def test_the_export_column_is_what_the_exporter_checks_say_about_each_image_tower():
    checked = 0
    for s in SUPPORTS:
        vision_cfg = open_clip.get_model_config(s.name)["vision_cfg"]
        if vision_cfg.get("timm_model_name"):
            assert not s.image_exportable  # timm towers are no open_clip VisionTransformer: _check_vision
            continue
        visual = open_clip.model._build_vision_tower(16, _shrunk_vision(vision_cfg))
        try:
            hf_vision_config(visual)
            exportable = True
        except ExportError:
            exportable = False
        assert exportable == s.image_exportable, s.name
        checked += 1
    assert checked > 40


def test_readme_support_table_is_the_scripts_output():
    text = README.read_text(encoding="utf-8")
    start, end = "<!-- support-table:start -->", "<!-- support-table:end -->"
    assert start in text and end in text, f"README.md lacks {start} ... {end}: paste `python scripts/support_table.py`"
    assert text.split(start, 1)[1].split(end, 1)[0].strip() == support.markdown_table().strip(), \
        "README.md's support table is stale: paste the output of `python scripts/support_table.py`"
