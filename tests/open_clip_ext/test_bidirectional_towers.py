"""Long-context variants of bidirectional text towers (SigLIP, SigLIP 2, CLIPA, MobileCLIP-S: ``no_causal_mask``).

Tiny SigLIP-like bases tokenize with unigram models trained here in SigLIP's (pad = eos = 1) and Gemma's (pad 0,
eos 1) layouts (tests/support/non_clip_tokenizers.py); a MobileCLIP-S-like base is tiny-clip with no causal mask
('argmax' pooling, CLIP's tokenizer). The RoPE tower keeps the base's attention (no mask, padding attended to) and
pools the new context's last column; CoPE is refused.
"""
import math

import open_clip
import pytest
import torch

from open_clip_ext.configs import derive_config, model_name_problem, register_model_config
from open_clip_ext.export.relpos_hf import relpos_config
from open_clip_ext.export.transformers_clip import ExportError
from open_clip_ext.text_tower import RelPosTextTransformer
from open_clip_ext.tokens import token_layout, trim_padding, trims_padding_exactly
from support.naive_towers import gelu, layer_norm, randomize_, rope_rotate
from support.non_clip_tokenizers import save_tokenizer, siglip_config, unregister, vocab_size

TEXTS = ["a photo of a red cat on a blue mat", "a dog runs in the green park", "two birds sit on a tall tree"]
LONG = " ".join(TEXTS * 12)  # about 1000 pieces: longer than any context here
BASES = {"siglip": "bidir-test-siglip", "gemma": "bidir-test-siglip2"}
MOBILE = "bidir-test-mobileclip"
KINDS = ("rope", "longclip", "uniform")


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    for layout, name in BASES.items():
        folder = save_tokenizer(str(tmp_path_factory.mktemp(layout)), layout, TEXTS)
        register_model_config(name, siglip_config(folder, layout, vocab_size(folder)))
    mobile = open_clip.get_model_config("tiny-clip")
    mobile["text_cfg"]["no_causal_mask"] = True
    register_model_config(MOBILE, mobile)
    yield
    names = [n for n in open_clip.list_models() if n.startswith("bidir-test-")]
    unregister(*names)


@pytest.fixture(scope="module")
def base_checkpoint(bases, tmp_path_factory):
    """(random SigLIP-like base, path of its saved weights)."""
    torch.manual_seed(0)
    model = randomize_(open_clip.create_model(BASES["siglip"])).eval()
    path = tmp_path_factory.mktemp("base") / "base.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    return model, str(path)


def test_cope_is_refused_for_a_bidirectional_base_and_every_other_kind_keeps_its_attention_and_pooling(bases):
    for name in (BASES["siglip"], MOBILE):
        with pytest.raises(ValueError, match="CoPE is causal only"):
            derive_config(name, "cope", 248)
        assert "CoPE is causal only" in model_name_problem(f"{name}-cope-248")
        stock = open_clip.get_model_config(name)["text_cfg"]
        for kind in KINDS:
            text = derive_config(name, kind, 248)["text_cfg"]
            assert text["no_causal_mask"] is True and text.get("pool_type") == stock.get("pool_type")
            assert text.get("hf_tokenizer_name") == stock.get("hf_tokenizer_name")
    with pytest.raises(ValueError, match="causal only"):
        RelPosTextTransformer(context_length=8, width=8, heads=2, layers=1, position="cope", no_causal_mask=True)


@pytest.mark.parametrize("layout,pad", [("siglip", 1), ("gemma", 0)])
def test_the_variant_tokenizer_writes_the_base_layout_at_the_new_length_and_the_pooled_column_stays_padding(
        bases, layout, pad):
    base = BASES[layout]
    short, medium = TEXTS[0], " ".join(TEXTS * 3)  # medium: longer than the base's 64, shorter than 248
    base_ids = open_clip.get_tokenizer(base)([short, medium])
    ids = open_clip.get_tokenizer(f"{base}-rope-248")([short, medium, LONG])
    inner = open_clip.get_tokenizer(base).tokenizer
    own = [inner(text, add_special_tokens=False)["input_ids"] for text in (short, medium, LONG)]
    assert 1 + len(own[0]) < 64 < 1 + len(own[1]) < 248 < len(own[2])
    eos = 1  # SigLIP's </s> and Gemma's <eos>; no start token in either layout
    expected = [row + [eos] + [pad] * (247 - len(row)) for row in own[:2]] + [own[2][:247] + [eos]]
    assert ids.tolist() == expected
    assert token_layout(open_clip.get_tokenizer(f"{base}-rope-248")).pad == pad
    assert torch.equal(ids[0, :64], base_ids[0])  # the same ids as the base's, padded further
    # 'last' pooling reads column 247: padding for every caption shorter than the context, as column 63 is in
    # the base for a caption shorter than 64; the base's column 63 would hold a caption piece here.
    assert ids[:2, -1].tolist() == [pad, pad] and base_ids[0, -1] == pad
    assert ids[1, 63] not in (pad, eos)


def _naive_bidirectional_rope(state, ids, heads, eps=1e-6, theta=10000.0):
    """SigLIP-style tower, written out: RoPE-rotated q and k, every query attends to every key (padding
    included), GELU MLP, final LayerNorm, the last column through the biased projection."""
    s = {k[len("text."):]: v.double() for k, v in state.items() if k.startswith("text.")}
    x = s["token_embedding.weight"][ids]
    length, width = x.shape
    d = width // heads
    layer = 0
    while f"transformer.resblocks.{layer}.ln_1.weight" in s:
        p = f"transformer.resblocks.{layer}."
        h = layer_norm(x, s[p + "ln_1.weight"], s[p + "ln_1.bias"], eps)
        q, k, v = (h @ s[p + "attn.in_proj_weight"].T + s[p + "attn.in_proj_bias"]).split(width, dim=1)
        out = []
        for head in range(heads):
            cols = slice(head * d, (head + 1) * d)
            qr = torch.stack([rope_rotate(q[t, cols], t, theta) for t in range(length)])
            kr = torch.stack([rope_rotate(k[t, cols], t, theta) for t in range(length)])
            out.append(torch.softmax(qr @ kr.T / math.sqrt(d), dim=1) @ v[:, cols])
        x = x + torch.cat(out, 1) @ s[p + "attn.out_proj.weight"].T + s[p + "attn.out_proj.bias"]
        h = layer_norm(x, s[p + "ln_2.weight"], s[p + "ln_2.bias"], eps)
        x = x + gelu(h @ s[p + "mlp.c_fc.weight"].T + s[p + "mlp.c_fc.bias"], False) @ s[p + "mlp.c_proj.weight"].T \
            + s[p + "mlp.c_proj.bias"]
        layer += 1
    pooled = layer_norm(x, s["ln_final.weight"], s["ln_final.bias"], eps)[-1]
    return pooled @ s["text_projection.weight"].T + s["text_projection.bias"]


def test_the_bidirectional_rope_tower_is_the_written_out_computation_from_the_base_weights(base_checkpoint):
    base, path = base_checkpoint
    variant = open_clip.create_model(f"{BASES['siglip']}-rope-248", pretrained=path).eval()
    # every text weight but the learned positions is the base's, and the tower has nothing else
    base_text = {k: v for k, v in base.state_dict().items() if k.startswith("text.")}
    got = {k: v for k, v in variant.state_dict().items() if k.startswith("text.")}
    assert set(base_text) - set(got) == {"text.positional_embedding"} and set(got) <= set(base_text)
    assert all(torch.equal(got[k], base_text[k]) for k in got)
    ids = open_clip.get_tokenizer(f"{BASES['siglip']}-rope-248")([TEXTS[1], LONG])
    reference = torch.stack([_naive_bidirectional_rope(variant.state_dict(), row, variant.text.heads) for row in ids])
    with torch.no_grad():
        fast = variant.encode_text(ids)  # the last block computes the pooled row alone
        variant.text.last_block_at_pooled_rows = False
        full = variant.encode_text(ids)
        changed = ids.clone()
        changed[1, 150] = ids[1, 150] % 20 + 3  # another piece, far past the base's 64 positions
        other = variant.encode_text(changed)
    torch.testing.assert_close(fast.double(), reference, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(full.double(), reference, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(other[1], full[1], atol=1e-4) and torch.allclose(other[0], full[0])


@pytest.mark.parametrize("kind", ["uniform", "longclip"])
def test_an_absolute_variant_at_the_base_length_is_the_base_and_reads_a_word_past_it_at_248(base_checkpoint, kind):
    base, path = base_checkpoint
    name = BASES["siglip"]
    same = open_clip.create_model(f"{name}-{kind}-64", pretrained=path).eval()
    long = open_clip.create_model(f"{name}-{kind}-248", pretrained=path).eval()
    ids = open_clip.get_tokenizer(name)(TEXTS)
    long_ids = open_clip.get_tokenizer(f"{name}-{kind}-248")([LONG])
    changed = long_ids.clone()
    changed[0, 150] = long_ids[0, 150] % 20 + 3
    with torch.no_grad():
        torch.testing.assert_close(same.encode_text(ids), base.encode_text(ids), rtol=0, atol=1e-6)
        assert not torch.allclose(long.encode_text(long_ids), long.encode_text(changed), atol=1e-4)


@pytest.mark.parametrize("name,kind", [(BASES["siglip"], k) for k in KINDS] + [(MOBILE, k) for k in KINDS])
def test_a_bidirectional_variant_is_never_trimmed_and_padding_does_change_its_features(bases, name, kind):
    torch.manual_seed(0)
    model = randomize_(open_clip.create_model(f"{name}-{kind}-248")).eval()
    assert not trims_padding_exactly(model)
    ids = open_clip.get_tokenizer(f"{name}-{kind}-248")([TEXTS[0]])
    with pytest.raises(ValueError, match="trimming padding would change"):
        trim_padding(ids, model)
    if kind == "rope":  # the only kind here that takes an input shorter than its context
        with torch.no_grad():
            features = model.encode_text(ids)
            assert not torch.allclose(model.encode_text(ids[:, :64]), features, atol=1e-4)
            # the pooled row computed alone in the last block ('argmax': mid-sequence) still sees the padding
            model.text.last_block_at_pooled_rows = False
            torch.testing.assert_close(model.encode_text(ids), features)
        with pytest.raises(ExportError, match="bidirectional"):
            relpos_config(model, pad_token_id=0)


def test_the_causal_variant_of_the_same_base_trims_exactly(bases):
    """Control: the predicate's False above comes from the attention alone."""
    cfg = open_clip.get_model_config(MOBILE)
    cfg["text_cfg"]["no_causal_mask"] = False
    register_model_config("bidir-test-causal", cfg)
    torch.manual_seed(0)
    model = randomize_(open_clip.create_model("bidir-test-causal-rope-248")).eval()
    ids = open_clip.get_tokenizer("bidir-test-causal-rope-248")([TEXTS[0]])
    assert trims_padding_exactly(model)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(trim_padding(ids, model)), model.encode_text(ids))
