"""Context-only variants of Hugging Face text towers (``<base>-context-<N>``): XLM-R, RoBERTa, mT5 and NLLB bases
shrunk to tiny local transformers models (config, weights and a word-level tokenizer in a folder: nothing is
downloaded) build at N tokens, start from the base with every weight unchanged, read a word past the base's 77
tokens, and are refused past the positions their transformers config defines, naming that limit. Stage 1 (which
distils into RoPE / CoPE) refuses them; stage 2 fine-tunes them."""
import re

import open_clip
import pytest
import torch
from transformers import AutoModel

import open_clip_ext
from open_clip_ext.configs import CONTEXT_NEEDS_HF, register_model_config
from support.model_registry import restored_registry  # noqa: F401  (fixture)
from support.non_clip_tokenizers import (HF_TOWER_LAYOUT, save_tiny_hf_tower, save_tokenizer, tiny_hf_clip_config,
                                         vocab_size)
from support.training_helpers import base_args, write_csv
from training_ext import main_context_finetune_rope, main_distill_rope
from training_ext.engine.params import UsageError

pytestmark = pytest.mark.usefixtures("restored_registry")

# model type: (open_clip config it shrinks, longest context its 130 position rows give, None for no limit)
ROWS = 130
TOWERS = {"xlm-roberta": ("xlm-roberta-base-ViT-B-32", ROWS - 2), "roberta": ("roberta-ViT-B-32", ROWS - 2),
          "mt5": ("mt5-base-ViT-B-32", None), "m2m_100": ("nllb-clip-base", ROWS)}
WORDS = [f"w{i}" for i in range(150)]
LONG, CHANGED = " ".join(WORDS[:100]), " ".join(WORDS[:90] + ["w140"] + WORDS[91:100])
SHORT = " ".join(WORDS[:20])


def _base(model_type: str, folder) -> str:
    stock_name, _ = TOWERS[model_type]
    save_tokenizer(str(folder), HF_TOWER_LAYOUT[model_type], [" ".join(WORDS)])
    save_tiny_hf_tower(str(folder), model_type, vocab=vocab_size(str(folder)), max_positions=ROWS)
    name = f"hfctx-{model_type}"
    register_model_config(name, tiny_hf_clip_config(str(folder), stock_name))
    return name


@pytest.mark.parametrize("model_type", sorted(TOWERS))
def test_context_variant_starts_from_the_base_and_reads_past_its_77_tokens(model_type, tmp_path):
    base = _base(model_type, tmp_path / "hf")
    stock = open_clip.create_model(base).eval()
    checkpoint = tmp_path / "base.pt"
    torch.save({"state_dict": stock.state_dict()}, checkpoint)
    name = f"{base}-context-120"
    variant = open_clip.create_model(name, pretrained=str(checkpoint)).eval()
    assert variant.context_length == 120 and open_clip.get_model_config(name)["text_cfg"]["context_length"] == 120
    base_state, got = stock.state_dict(), variant.state_dict()
    assert got.keys() == base_state.keys()  # nothing new
    assert all(torch.equal(got[key], base_state[key]) for key in base_state)

    base_tokens, tokens = open_clip.get_tokenizer(base), open_clip.get_tokenizer(name)
    assert tokens([LONG]).shape == (1, 120) and base_tokens([LONG]).shape == (1, 77)
    assert torch.equal(base_tokens([LONG]), base_tokens([CHANGED]))  # word 91 is past what the base reads
    with torch.no_grad():
        long, changed = variant.encode_text(tokens([LONG])), variant.encode_text(tokens([CHANGED]))
        short, stock_short = variant.encode_text(tokens([SHORT])), stock.encode_text(base_tokens([SHORT]))
    assert torch.isfinite(long).all() and not torch.allclose(long, changed)
    # a caption both read is the same caption: only padding (masked by the tower) is added
    torch.testing.assert_close(short, stock_short, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_type", sorted(TOWERS))
def test_a_context_past_the_towers_positions_is_refused_naming_the_limit(model_type, tmp_path):
    base = _base(model_type, tmp_path / "hf")
    _, limit = TOWERS[model_type]
    if limit is None:  # relative buckets: any length
        assert open_clip_ext.derive_config(base, "context", 4096)["text_cfg"]["context_length"] == 4096
        return
    assert open_clip_ext.derive_config(base, "context", limit)["text_cfg"]["context_length"] == limit
    with pytest.raises(ValueError, match=rf"reads at most {limit} \(.*{ROWS} position"):
        open_clip_ext.derive_config(base, "context", limit + 1)
    assert open_clip.get_model_config(f"{base}-context-{limit + 1}") is None
    with pytest.raises(RuntimeError, match=rf"Cannot derive '{base}-context-{limit + 1}'.*reads at most {limit}"):
        open_clip.create_model(f"{base}-context-{limit + 1}")


@pytest.mark.parametrize("model_type", ["roberta", "xlm-roberta"])
def test_roberta_positions_end_where_the_limit_says(model_type, tmp_path):
    """The limit against transformers' own embedding: RoBERTa numbers tokens from pad_token_id + 1."""
    folder = save_tiny_hf_tower(str(tmp_path), model_type, vocab=50, max_positions=ROWS)
    embeddings = AutoModel.from_pretrained(folder).embeddings
    _, limit = TOWERS[model_type]
    assert embeddings(input_ids=torch.full((1, limit), 5)).shape == (1, limit, 32)
    with pytest.raises((IndexError, RuntimeError)):  # past the table (or its position-id buffer)
        embeddings(input_ids=torch.full((1, limit + 1), 5))


def test_refusals_name_their_reason(tmp_path):
    with pytest.raises(ValueError, match=re.escape(CONTEXT_NEEDS_HF)):
        open_clip_ext.derive_config("tiny-clip", "context", 100)
    with pytest.raises(ValueError, match=r"CoCa .*multimodal_cfg.context_length"):
        open_clip_ext.derive_config("coca_roberta-ViT-B-32", "context", 100)
    with pytest.raises(ValueError, match=r"Hugging Face text tower .* \(use context\)"):
        open_clip_ext.derive_config("roberta-ViT-B-32", "rope", 248)
    cfg = tiny_hf_clip_config(str(tmp_path), "roberta-ViT-B-32")  # an empty folder: no config.json
    with pytest.raises(ValueError, match=rf"cannot read the transformers config of text_cfg.hf_model_name "
                                         rf"'{re.escape(str(tmp_path))}'"):
        open_clip_ext.derive_config(cfg, "context", 100)


def test_stage1_refuses_a_context_variant_and_stage2_fine_tunes_it(tmp_path):
    base = _base("xlm-roberta", tmp_path / "hf")
    stock = open_clip.create_model(base)
    checkpoint = tmp_path / "base.pt"
    torch.save({"state_dict": stock.state_dict()}, checkpoint)
    train = write_csv(str(tmp_path / "train"), rows=4)
    with pytest.raises(UsageError, match=rf"--model {base}-context-120 .*RoPE or CoPE"):
        main_distill_rope.parse_args(["--model", f"{base}-context-120", "--teacher-model", base]
                                     + base_args(str(tmp_path / "logs"), "s1", train))
    args = main_context_finetune_rope.parse_args(["--model", f"{base}-context-120", "--pretrained", str(checkpoint)]
                                                 + base_args(str(tmp_path / "logs"), "s2", train))
    state = main_context_finetune_rope.run(args)
    assert state.model.context_length == 120 and state.step == 1
    trained = state.model.state_dict()
    assert not torch.equal(trained["text.transformer.embeddings.word_embeddings.weight"],
                           stock.state_dict()["text.transformer.embeddings.word_embeddings.weight"])
