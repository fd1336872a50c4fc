"""The exported CLIPTokenizer against open_clip's SimpleTokenizer (the reference) at 248 tokens."""
import pytest
import torch
from open_clip.tokenizer import SimpleTokenizer
from transformers import CLIPTokenizer

from open_clip_ext.export.tokenizer import clip_tokenizer, open_clip_input_ids, write_vocab_files
from support.export_fixtures import CAPTIONS, words

CONTEXT = 248
EOT_ID = 49407
# Captions where ftfy / HTML unescaping (open_clip's cleaning) changes the text before BPE.
NEEDS_CLEANING = ["“curly quotes” and a ﬁne ligature", "fish &amp; chips", "ＦＵＬＬ width"]
PLAIN = CAPTIONS + ["it's a dog's life; isn't it?", "  spaced\tout \n lines  ", "1234567 apples, 3.5 pears",
                    words(246), words(247), words(400, 1) + " tail words"]  # 248 tokens exactly, 249, more


@pytest.fixture(scope="module")
def hf_tokenizer():
    return clip_tokenizer(CONTEXT)


@pytest.fixture(scope="module")
def reference():
    return SimpleTokenizer(context_length=CONTEXT)


def plain_call(tokenizer, texts):
    """The documented transformers call: pad and truncate to the model's length."""
    return tokenizer(texts, padding="max_length", truncation=True, max_length=CONTEXT, return_tensors="pt")


def test_ids_equal_open_clip_on_varied_captions(hf_tokenizer, reference):
    texts = PLAIN + NEEDS_CLEANING
    assert torch.equal(open_clip_input_ids(hf_tokenizer, texts), reference(texts))


def test_plain_call_differs_only_in_padding(hf_tokenizer, reference):
    """Without cleaning or pad fix-up: same ids up to the end-of-text token, <|endoftext|> padding after it."""
    batch, expected = plain_call(hf_tokenizer, PLAIN), reference(PLAIN)
    ids, mask = batch["input_ids"], batch["attention_mask"].bool()
    assert torch.equal(ids[mask], expected[mask])
    assert torch.equal(mask, expected != 0)
    assert (ids[~mask] == EOT_ID).all()
    truncated = [i for i, t in enumerate(PLAIN) if len(reference.encode(t)) + 2 > CONTEXT]
    assert len(truncated) >= 3  # the cut is exercised, and both keep <|endoftext|> as the last token
    assert (ids[truncated, -1] == EOT_ID).all() and (expected[truncated, -1] == EOT_ID).all()


def test_plain_call_misses_open_clip_text_cleaning(hf_tokenizer, reference):
    """Why ``open_clip_input_ids`` cleans first: transformers' normaliser does not run ftfy / HTML unescaping."""
    for text in NEEDS_CLEANING:
        assert not torch.equal(plain_call(hf_tokenizer, [text])["input_ids"][0][:8], reference([text])[0][:8])


def test_vocab_and_merges_files_alone_give_the_same_tokenizer(tmp_path, hf_tokenizer, reference):
    """vocab.json + merges.txt (the pre-tokenizer.json format) rebuild the same tokenizer."""
    write_vocab_files(tmp_path)
    rebuilt = CLIPTokenizer.from_pretrained(str(tmp_path), model_max_length=CONTEXT)
    assert torch.equal(open_clip_input_ids(rebuilt, PLAIN), reference(PLAIN))


def test_exclamation_pad_token_swallows_literal_exclamation_marks():
    """Documents why "!" (id 0, SDXL's second tokenizer) is not the default pad token."""
    ids = plain_call(clip_tokenizer(CONTEXT, pad_token="!"), ["wow!"])["input_ids"][0]
    assert ids[2].item() == 0  # open_clip encodes this "!" as "!</w>" (256)
    assert SimpleTokenizer().encode("wow!")[1] == 256
