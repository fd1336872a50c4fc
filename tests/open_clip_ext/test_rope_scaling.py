"""RoPE position scaling past the trained length (open_clip_ext.rope, RelPosTextTransformer.set_position_scaling):
the rotated q/k equal a naive computation of each scaling written out here from its paper, every scaling is the
plain RoPE at scale 1, and CoPE towers refuse with the reason."""
import math

import open_clip
import pytest
import torch

import open_clip_ext  # noqa: F401  (registers the tiny configs)
from open_clip_ext.rope import RotaryEmbedding

HEAD_DIM, TRAINED, LONGER, THETA = 16, 248, 512, 10000.0


def naive_rotation(x: torch.Tensor, kind: str, trained: int, context: int, theta: float = THETA) -> torch.Tensor:
    """x (L, d) rotated pair by pair, each angle and factor from the formulas, one position and pair at a time."""
    d = x.shape[-1]
    s = max(1.0, context / trained)
    out = torch.empty_like(x, dtype=torch.float64)
    for i in range(d // 2):
        base = theta * s ** (d / (d - 2)) if kind == "ntk" else theta
        freq = base ** (-2 * i / d)
        factor = 1.0
        if kind == "yarn":  # arXiv 2309.00071 eq. 18-20 with alpha = 1, beta = 32
            r = trained / (2 * math.pi / freq)
            gamma = 0.0 if r < 1 else 1.0 if r > 32 else (r - 1) / 31
            freq = (1 - gamma) * freq / s + gamma * freq
            factor = 0.1 * math.log(s) + 1
        for p in range(x.shape[0]):
            c, n = math.cos(p * freq), math.sin(p * freq)
            a, b = float(x[p, 2 * i]), float(x[p, 2 * i + 1])
            out[p, 2 * i] = factor * (a * c - b * n)
            out[p, 2 * i + 1] = factor * (a * n + b * c)
    return out


@pytest.mark.parametrize("kind", ["none", "ntk", "yarn"])
def test_scaled_rotation_matches_the_naive_formula_at_every_position(kind):
    torch.manual_seed(0)
    tower = open_clip.create_model("tiny-clip-rope-248").text
    assert tower.set_position_scaling(kind, LONGER) == {"kind": kind, "trained_length": TRAINED,
                                                       "context_length": LONGER}
    rotary = tower.transformer.rotary
    assert rotary.head_dim == HEAD_DIM and tower.context_length == LONGER
    x = torch.randn(LONGER, HEAD_DIM, dtype=torch.float64)
    expected = naive_rotation(x, kind, TRAINED, LONGER)
    torch.testing.assert_close(rotary(x[None, None])[0, 0], expected, rtol=1e-9, atol=1e-9)
    # one row at a given position (the pooled-rows path) is rotated as in the full table
    rows = torch.tensor([0, 300, LONGER - 1])
    single = rotary(x[rows][:, None, None], LONGER, positions=rows)[:, 0, 0]
    torch.testing.assert_close(single, expected[rows], rtol=1e-9, atol=1e-9)
    # bf16 models recompute the tables in full precision: the same scaling, not the one of a shorter length
    torch.testing.assert_close(rotary.to(torch.bfloat16)(x[None, None].float())[0, 0], expected.float(),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["none", "ntk", "yarn"])
def test_every_scaling_is_plain_rope_at_scale_one(kind):
    x = torch.randn(1, 2, TRAINED, HEAD_DIM)
    plain = RotaryEmbedding(HEAD_DIM, TRAINED, THETA)
    scaled = RotaryEmbedding(HEAD_DIM, TRAINED, THETA)
    scaled.set_scaling(kind, TRAINED)
    assert torch.equal(scaled(x), plain(x))
    # a shorter context reads the trained positions unscaled
    scaled.set_scaling(kind, 100)
    assert torch.equal(scaled(x[..., :100, :]), plain(x[..., :100, :]))


def test_scalings_differ_past_scale_one_and_features_read_512_tokens():
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-clip-rope-248").eval()
    ids = open_clip.get_tokenizer("tiny-clip-rope-248", context_length=LONGER)(["a long caption " * 150])
    with pytest.raises(ValueError, match="force_context_length"):
        model.encode_text(ids)
    features = {}
    with torch.no_grad():
        for kind in ("none", "ntk", "yarn"):
            model.text.set_position_scaling(kind, LONGER)
            features[kind] = model.encode_text(ids)
    assert not torch.allclose(features["none"], features["ntk"]) and not torch.allclose(features["ntk"],
                                                                                        features["yarn"])
    # the override is not a config edit: what the loader checks checkpoints against is unchanged
    assert model.text.position_config == open_clip.create_model("tiny-clip-rope-248").text.position_config


def test_unknown_scaling_and_cope_towers_are_refused():
    tower = open_clip.create_model("tiny-clip-rope-248").text
    with pytest.raises(ValueError, match="none, ntk, yarn"):
        tower.set_position_scaling("linear", LONGER)
    assert tower.context_length == TRAINED  # nothing changed by the refused call
    cope = open_clip.create_model("tiny-clip-cope-248").text
    with pytest.raises(ValueError, match="position table has 248 entries and none past them"):
        cope.set_position_scaling("none", LONGER)
