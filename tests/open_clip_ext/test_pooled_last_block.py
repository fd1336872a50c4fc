"""The last block computed only at the pooled rows gives the same features and gradients as the full block."""
import open_clip
import pytest
import torch

import open_clip_ext
from support.naive_towers import randomize_
from support.tower_grads import features_and_grads

CAPTIONS = ["a red circle on a blue square", "stripes " * 100, "two cats", "a dog, a ball, and a very green lawn"]


def _tower(position, pool_type):
    cfg = open_clip_ext.derive_config("tiny-clip", position, 248)
    tokenizer = open_clip.get_tokenizer("tiny-clip")
    cfg["text_cfg"].update(pool_type=pool_type, eos_id=tokenizer.eot_token_id)
    name = f"tiny-clip-{position}-248-{pool_type}-pooled-test"
    open_clip_ext.configs.register_model_config(name, cfg)
    model = randomize_(open_clip.create_model(name), scale=0.3)
    ids = open_clip.get_tokenizer(name)(CAPTIONS)[:, :120]
    ids[1, -1] = tokenizer.eot_token_id  # the truncated caption keeps its end token, at the last row
    return model.text, ids


@pytest.mark.parametrize("position", ["rope", "cope"])
@pytest.mark.parametrize("pool_type", ["argmax", "eos", "last"])
def test_pooled_last_block_equals_full_block(position, pool_type):
    text, ids = _tower(position, pool_type)
    mlp_inputs = []
    hook = text.transformer.resblocks[-1].mlp.register_forward_hook(lambda m, i, o: mlp_inputs.append(i[0].shape))
    text.last_block_at_pooled_rows = False
    full, full_grads = features_and_grads(text, ids)
    text.last_block_at_pooled_rows = True
    pooled, pooled_grads = features_and_grads(text, ids)
    hook.remove()
    assert mlp_inputs == [(4, 120, 64), (4, 64)]  # the shortcut ran: one MLP row per caption
    torch.testing.assert_close(pooled, full, rtol=0, atol=1e-5)
    assert full.abs().max() > 0.1 and max(g.abs().max() for g in full_grads.values()) > 0.1
    assert pooled_grads.keys() == full_grads.keys()
    for name, grad in full_grads.items():
        torch.testing.assert_close(pooled_grads[name], grad, rtol=0, atol=1e-5, msg=name)


def test_pooled_last_block_under_gradient_checkpointing_and_with_token_outputs():
    text, ids = _tower("rope", "argmax")
    text.last_block_at_pooled_rows = False
    full, full_grads = features_and_grads(text, ids)
    text.last_block_at_pooled_rows = True
    text.set_grad_checkpointing(True)
    pooled, pooled_grads = features_and_grads(text, ids)
    torch.testing.assert_close(pooled, full, rtol=0, atol=1e-5)
    for name, grad in full_grads.items():
        torch.testing.assert_close(pooled_grads[name], grad, rtol=0, atol=1e-5, msg=name)
    text.output_tokens = True  # token outputs need every row: the full path runs
    features, tokens = text(ids)
    assert tokens.shape == (4, 120, 64)
    torch.testing.assert_close(features, full, rtol=0, atol=1e-5)


def test_rotary_at_given_positions_equals_the_full_rotation_read_at_those_rows():
    from open_clip_ext.rope import RotaryEmbedding

    rotary = RotaryEmbedding(16, 40)
    full = torch.randn(3, 2, 40, 16)
    rows = torch.tensor([5, 39, 0])
    batch = torch.arange(3)
    expected = rotary(full)[batch, :, rows].unsqueeze(2)
    assert torch.equal(rotary(full[batch, :, rows].unsqueeze(2), 40, positions=rows), expected)
