"""The RoPE and CoPE towers against naive re-implementations, and their context-length behaviour."""
import math

import open_clip
import pytest
import torch

import open_clip_ext
from open_clip_ext.rope import RotaryEmbedding, dynamic_ntk_theta
from support.naive_towers import randomize_, text_forward

CAPTIONS = ["a red circle on a blue square", "stripes " * 90, "two cats"]


def _model(name, **kwargs):
    return randomize_(open_clip.create_model(name, **kwargs)).eval()


@pytest.mark.parametrize("name,position", [("tiny-clip-rope-248", "rope"), ("tiny-clip-cope-248", "cope")])
def test_tower_matches_naive_reimplementation(name, position):
    model = _model(name).double()
    tokenizer = open_clip.get_tokenizer(name)
    ids = tokenizer(CAPTIONS)[:, :40]  # keep the naive loops short
    ids[1, -1] = tokenizer.eot_token_id
    with torch.no_grad():
        got = model.encode_text(ids)
    for row in range(len(ids)):
        want = text_forward(model.state_dict(), ids[row], heads=4, position=position)
        torch.testing.assert_close(got[row], want, rtol=1e-9, atol=1e-9)


def test_rope_pairs_are_interleaved_not_rotate_half():
    rotary = RotaryEmbedding(head_dim=4, max_positions=3, theta=100.0)
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]] * 3)
    out = rotary(x)
    for t in range(3):
        # pair (0,1) turns by t*1, pair (2,3) by t*100^(-1/2)
        for pair, freq in ((0, 1.0), (2, 0.1)):
            z = complex(x[t, pair], x[t, pair + 1]) * complex(math.cos(t * freq), math.sin(t * freq))
            assert out[t, pair].item() == pytest.approx(z.real, abs=1e-6)
            assert out[t, pair + 1].item() == pytest.approx(z.imag, abs=1e-6)


def test_rope_tables_are_not_saved_in_state_dict():
    model = open_clip.create_model("tiny-clip-rope-248")
    assert not any("rotary" in k or k.endswith(".cos") for k in model.state_dict())
    assert "text.positional_embedding" not in model.state_dict()


@pytest.mark.parametrize("name", ["tiny-clip-rope-248", "tiny-clip-cope-248"])
def test_short_input_equals_padded_input(name):
    model = _model(name)
    ids = open_clip.get_tokenizer(name)(["a small caption", "another, a little longer, caption here"])
    with torch.no_grad():
        padded = model.encode_text(ids)
        short = model.encode_text(ids[:, :77])
        tiny = model.encode_text(ids[:, :12])
    torch.testing.assert_close(short, padded, rtol=0, atol=1e-6)
    torch.testing.assert_close(tiny, padded, rtol=0, atol=1e-6)


def test_rope_reads_past_trained_context_with_force_context_length():
    model = _model("tiny-clip-rope-248", force_context_length=512)
    tokenizer = open_clip.get_tokenizer("tiny-clip-rope-248", context_length=512)
    ids = tokenizer(["word " * 440 + "the first ending", "word " * 440 + "a different ending"])
    assert ids.shape[1] == 512 and (ids[:, 443] > 0).all()
    assert torch.equal(ids[0, :441], ids[1, :441])
    with torch.no_grad():
        features = model.encode_text(ids)
    assert torch.isfinite(features).all()
    assert not torch.allclose(features[0], features[1])  # tokens past 440 change the embedding


def test_too_long_inputs_are_refused_clearly():
    rope = open_clip.create_model("tiny-clip-rope-248")
    cope = open_clip.create_model("tiny-clip-cope-248")
    ids = torch.randint(1, 1000, (1, 300))
    with pytest.raises(ValueError, match="force_context_length"):
        rope.encode_text(ids)
    with pytest.raises(ValueError, match="248"):
        cope.encode_text(ids)
    with pytest.raises(ValueError, match="CoPE text tower has position tables for 248 tokens"):
        cope.text.transformer.resblocks[0].attn(torch.zeros(1, 300, 64))


def test_dynamic_ntk_theta_is_a_config_value():
    cfg = open_clip_ext.derive_config("tiny-clip", "rope", 248, rope_ntk_factor=2.0)
    name = "tiny-clip-rope-248-ntk-test"
    open_clip_ext.configs.register_model_config(name, cfg)
    model = open_clip.create_model(name)
    d = 16
    want = 10000.0 * ((2.0 * 248 / 77) - 1.0) ** (d / (d - 2))
    assert model.text.rope_theta == pytest.approx(want)
    assert dynamic_ntk_theta(10000.0, d, 2.0, 77, 248) == pytest.approx(want)
    plain = open_clip.create_model("tiny-clip-rope-248")
    plain.load_state_dict(model.state_dict())
    ids = open_clip.get_tokenizer("tiny-clip-rope-248")(["theta changes the embedding of this caption"])
    with torch.no_grad():
        assert not torch.allclose(plain.encode_text(ids), model.encode_text(ids))
    assert open_clip.get_model_config(name)["text_cfg"]["rope_ntk_factor"] == 2.0
