"""open_clip_ext.trim_padding: the cut length is the batch's last EOT (checked against a loop over rows), and
cutting leaves every causal EOT-pooled tower's features unchanged (RoPE, CoPE; open_clip's own towers refuse shorter input)."""
import open_clip
import pytest
import torch

from open_clip_ext import EOT_TOKEN_ID, trim_padding
from support.naive_towers import randomize_


def _naive_end(ids):
    ends = []
    for row in ids.tolist():
        ends.append(row.index(EOT_TOKEN_ID) + 1 if EOT_TOKEN_ID in row else len(row))
    return max(ends)


@pytest.mark.parametrize("lengths", [(5, 9, 3), (12, 12), (1, 2)])
def test_trim_length_is_the_last_eot_of_the_batch(lengths):
    ids = torch.zeros(len(lengths), 12, dtype=torch.long)
    for row, length in enumerate(lengths):
        ids[row, :length - 1] = torch.arange(1, length)
        ids[row, length - 1] = EOT_TOKEN_ID
    trimmed = trim_padding(ids)
    assert trimmed.shape == (len(lengths), _naive_end(ids))
    assert torch.equal(trimmed, ids[:, :trimmed.shape[1]])


def test_a_row_without_eot_keeps_the_whole_batch():
    ids = torch.ones(2, 10, dtype=torch.long)
    ids[0, 3] = EOT_TOKEN_ID
    assert trim_padding(ids).shape == (2, 10)


@pytest.mark.parametrize("model", ["tiny-clip-rope-248", "tiny-clip-cope-248"])
def test_trimmed_batches_give_the_padded_features(model):
    tower = randomize_(open_clip.create_model(model).text, scale=0.3).eval()
    ids = open_clip.get_tokenizer("tiny-clip")(["a red circle", "two blue squares left of a green triangle " * 3])
    trimmed = trim_padding(ids)
    assert trimmed.shape[1] < ids.shape[1]
    with torch.no_grad():
        torch.testing.assert_close(tower(trimmed), tower(ids), rtol=0, atol=1e-5)
