"""open_clip_ext.trim_padding: the cut length is the batch's last pooled end token, found by the tower's own rule and
end id (checked against a loop over rows), cutting leaves every causal end-token-pooled tower's features unchanged
(RoPE, CoPE), and towers for which it would not are refused (open_clip's own towers, Long-CLIP, 'last' pooling)."""
import open_clip
import pytest
import torch

import open_clip_ext
from open_clip_ext import trim_padding, trims_padding_exactly
from open_clip_ext.configs import register_model_config
from support.naive_towers import randomize_

CLIP_END = open_clip.SimpleTokenizer().eot_token_id  # 49407: an ordinary word piece in MetaCLIP 2's vocabularies


def _naive_end(ids, end_id, first_if_missing):
    """1 + the largest position of a row's first end id; a row without one counts as ``first_if_missing``."""
    ends = []
    for row in ids.tolist():
        ends.append(row.index(end_id) + 1 if end_id in row else first_if_missing)
    return max(ends)


def _tower(position, pool_type, eos_id=None):
    cfg = open_clip_ext.derive_config("tiny-clip", position, 248)
    cfg["text_cfg"]["pool_type"] = pool_type
    if eos_id is not None:
        cfg["text_cfg"]["eos_id"] = eos_id
    name = f"tiny-clip-{position}-248-{pool_type}-{eos_id}-trim-test"
    register_model_config(name, cfg)
    return randomize_(open_clip.create_model(name).text, scale=0.3).eval()


@pytest.mark.parametrize("lengths", [(5, 9, 3), (12, 12), (1, 2)])
def test_trim_length_is_the_last_end_token_of_the_batch(lengths):
    tower = open_clip.create_model("tiny-clip-rope-248").text  # argmax pooling: CLIP's end id is its largest
    ids = torch.zeros(len(lengths), 12, dtype=torch.long)
    for row, length in enumerate(lengths):
        ids[row, :length - 1] = torch.arange(1, length)
        ids[row, length - 1] = CLIP_END
    trimmed = trim_padding(ids, tower)
    assert trimmed.shape == (len(lengths), _naive_end(ids, CLIP_END, len(ids[0])))
    assert torch.equal(trimmed, ids[:, :trimmed.shape[1]])


@pytest.mark.parametrize("position", ["rope", "cope"])
def test_an_eos_tower_trims_at_its_own_end_id_and_49407_is_an_ordinary_token(position):
    """MetaCLIP 2's layout: ``</s>`` = 2 ends a caption, padding is 1, and 49407 is a word piece like any other."""
    tower = _tower(position, "eos", eos_id=2)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 49408, (4, 30), generator=generator)
    ids[:, 1] = CLIP_END  # in every row, early: cutting after it would drop real tokens
    ends = [6, 17, 11, None]  # the last row has no end id: pooled at position 0, as open_clip pools it
    for row, end in enumerate(ends):
        if end is not None:
            ids[row, end] = 2
            ids[row, end + 1:] = 1
    trimmed = trim_padding(ids, tower)
    assert trimmed.shape[1] == _naive_end(ids, 2, 1) == 18
    with torch.no_grad():
        torch.testing.assert_close(tower(trimmed), tower(ids), rtol=0, atol=1e-5)
    # the end id in the last column of one row: nothing can be cut, however often 49407 occurs before it
    ids[3, -1] = 2
    assert torch.equal(trim_padding(ids, tower), ids)


@pytest.mark.parametrize("model", ["tiny-clip-rope-248", "tiny-clip-cope-248"])
def test_trimmed_batches_give_the_padded_features(model):
    model = open_clip.create_model(model)
    tower = randomize_(model.text, scale=0.3).eval()
    ids = open_clip.get_tokenizer("tiny-clip")(["a red circle", "two blue squares left of a green triangle " * 3])
    trimmed = trim_padding(ids, model)
    assert trimmed.shape[1] < ids.shape[1]
    with torch.no_grad():
        torch.testing.assert_close(tower(trimmed), tower(ids), rtol=0, atol=1e-5)


def test_the_predicate_follows_causality_pooling_and_positions():
    for name in ("tiny-clip-rope-248", "tiny-clip-cope-248"):
        model = open_clip.create_model(name)
        assert trims_padding_exactly(model) and trims_padding_exactly(model.text)
    assert trims_padding_exactly(_tower("rope", "eos", eos_id=2))
    refused = {"stock tower (a position table of fixed length)": open_clip.create_model("tiny-clip"),
               "Long-CLIP": open_clip.create_model("tiny-clip-longclip-248"),
               "'last' pooling": _tower("rope", "last")}
    ids = torch.ones(2, 77, dtype=torch.long)
    for why, model in refused.items():
        assert not trims_padding_exactly(model), why
        with pytest.raises(ValueError, match="trimming padding would change"):
            trim_padding(ids, model)
