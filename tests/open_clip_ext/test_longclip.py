"""Long-CLIP compatibility: the position-stretch rule, Long-CLIP checkpoints, frozen rows, the uniform baseline.

Reference values come from independent computations written here from Long-CLIP's description (arXiv
2403.15378, docs/text_towers.md): an explicit loop for the stretch rule and a naive float64 text forward of Long-CLIP's model
(``x = tok + pe * mask1 + pe_res * mask2``, pre-norm causal blocks, EOT pooling, projection).
"""
import math

import open_clip
import pytest
import torch
import torch.nn.functional as F

import open_clip_ext
from open_clip_ext.convert import CheckpointError
from open_clip_ext.longclip import stretch_positions

KEEP = 20


def longclip_rule_loop(table):
    """Long-CLIP's conversion written out row by row: keep 20, four rows per gap, extrapolate the last four."""
    length, width = table.shape
    out = torch.zeros(4 * length - 3 * KEEP, width, dtype=torch.float64)
    t = table.double()
    out[:KEEP] = t[:KEEP]
    for i in range(length - 1 - KEEP):
        for j in range(4):
            out[KEEP + 4 * i + j] = (4 - j) / 4 * t[KEEP + i] + j / 4 * t[KEEP + i + 1]
    for j in range(4):
        out[4 * length - 3 * KEEP - 4 + j] = t[-1] + j / 4 * (t[-1] - t[-2])
    return out


def test_stretch_reproduces_longclip_rule_to_248_rows():
    table = torch.randn(77, 8)
    stretched = stretch_positions(table, 248)
    assert stretched.shape == (248, 8)
    torch.testing.assert_close(stretched.double(), longclip_rule_loop(table), atol=1e-6, rtol=0)
    assert torch.equal(stretched[:KEEP], table[:KEEP])


def test_stretch_of_a_linear_table_is_exact_at_any_length():
    # Closed form: a table linear in the position index stays linear, the tail (extrapolation too) included.
    slope, offset = torch.randn(6), torch.randn(6)
    table = offset + torch.arange(77.0)[:, None] * slope
    for length in (248, 130):
        stretch = (length - KEEP) / (77 - KEEP)
        source = torch.cat([torch.arange(float(KEEP)), KEEP + torch.arange(float(length - KEEP)) / stretch])
        torch.testing.assert_close(stretch_positions(table, length), offset + source[:, None] * slope,
                                   atol=1e-4, rtol=0)


def _random_longclip_checkpoint(path):
    """A Long-CLIP-layout state dict (OpenAI keys, two 248-row tables) with every tensor random."""
    stock = open_clip.create_model("tiny-clip").state_dict()
    state = {k: torch.randn_like(v) * 0.2 for k, v in stock.items()}
    state["logit_scale"] = torch.tensor(math.log(100.0))
    width = stock["positional_embedding"].shape[1]
    state["positional_embedding"] = torch.randn(248, width) * 0.3
    state["positional_embedding_res"] = torch.randn(248, width) * 0.3
    torch.save(state, path)
    return state


def naive_longclip_text(state, ids, heads):
    """Long-CLIP's encode_text for one caption, float64, written from its definition."""
    s = {k: v.double() for k, v in state.items()}
    n = int(ids.argmax()) + 1  # causal mask + EOT pooling: later tokens cannot matter
    mask1 = (torch.arange(248) < KEEP).double()[:, None]
    positions = s["positional_embedding"] * mask1 + s["positional_embedding_res"] * (1 - mask1)
    x = s["token_embedding.weight"][ids[:n]] + positions[:n]
    width = x.shape[1]
    d = width // heads
    causal = torch.full((n, n), float("-inf"), dtype=torch.float64).triu(1)
    layer = 0
    while f"transformer.resblocks.{layer}.ln_1.weight" in s:
        p = f"transformer.resblocks.{layer}."
        h = F.layer_norm(x, (width,), s[p + "ln_1.weight"], s[p + "ln_1.bias"])
        q, k, v = (h @ s[p + "attn.in_proj_weight"].T + s[p + "attn.in_proj_bias"]).split(width, dim=-1)
        outs = []
        for hd in range(heads):
            c = slice(hd * d, (hd + 1) * d)
            weights = torch.softmax(q[:, c] @ k[:, c].T / math.sqrt(d) + causal, dim=-1)
            outs.append(weights @ v[:, c])
        x = x + torch.cat(outs, -1) @ s[p + "attn.out_proj.weight"].T + s[p + "attn.out_proj.bias"]
        h = F.layer_norm(x, (width,), s[p + "ln_2.weight"], s[p + "ln_2.bias"])
        h = h @ s[p + "mlp.c_fc.weight"].T + s[p + "mlp.c_fc.bias"]
        h = h * torch.sigmoid(1.702 * h)  # QuickGELU, as in OpenAI CLIP and Long-CLIP
        x = x + h @ s[p + "mlp.c_proj.weight"].T + s[p + "mlp.c_proj.bias"]
        layer += 1
    x = F.layer_norm(x, (width,), s["ln_final.weight"], s["ln_final.bias"])
    return x[n - 1] @ s["text_projection"]


def _caption_ids(lengths, context=248, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), context, dtype=torch.long)
    for row, length in enumerate(lengths):
        ids[row, 0] = 49406
        ids[row, 1:length - 1] = torch.randint(1, 49000, (length - 2,), generator=g)
        ids[row, length - 1] = 49407
    return ids


def test_longclip_checkpoint_gives_longclip_embeddings(tmp_path):
    path = tmp_path / "longclip-tiny.pt"
    state = _random_longclip_checkpoint(path)
    model = open_clip.create_model("tiny-clip-longclip-248", pretrained=str(path), force_quick_gelu=True).eval()
    ids = _caption_ids([5, 19, 21, 60, 150, 248])
    with torch.no_grad():
        got = model.encode_text(ids)
    expected = torch.stack([naive_longclip_text(state, row, heads=4) for row in ids])
    torch.testing.assert_close(got.double(), expected, atol=2e-5, rtol=1e-4)
    loaded = model.state_dict()
    for key in ("visual.conv1.weight", "visual.proj", "logit_scale"):
        assert torch.equal(loaded[key], state[key])
    # Inputs shorter than the context (a 77-token batch) give the same features as the padded input.
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(ids[:3, :77]), got[:3])


def test_own_longclip_checkpoint_round_trips(tmp_path):
    model = open_clip.create_model("tiny-clip-longclip-248").eval()
    with torch.no_grad():
        model.text.positional_embedding_res.add_(torch.randn_like(model.text.positional_embedding_res))
    path = tmp_path / "epoch_1.pt"
    cfg = open_clip.get_model_config("tiny-clip-longclip-248")
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
                "model_cfg": cfg}, path)
    again = open_clip.create_model("tiny-clip-longclip-248", pretrained=str(path)).eval()
    ids = _caption_ids([10, 100, 240])
    with torch.no_grad():
        assert torch.equal(again.encode_text(ids), model.encode_text(ids))
    rope_cfg = open_clip.get_model_config("tiny-clip-rope-248")
    torch.save({"state_dict": model.state_dict(), "model_cfg": rope_cfg}, path)
    with pytest.raises(CheckpointError, match="pos_embed_type='rope'"):
        open_clip.create_model("tiny-clip-longclip-248", pretrained=str(path))


def test_stock_checkpoint_is_stretched_and_short_captions_keep_their_features(tmp_path):
    stock = open_clip.create_model("tiny-clip").eval()
    path = tmp_path / "stock.pt"
    torch.save(stock.state_dict(), path)
    model = open_clip.create_model("tiny-clip-longclip-248", pretrained=str(path)).eval()
    expected_table = stretch_positions(stock.positional_embedding.detach(), 248)
    assert torch.equal(model.text.position_table(), expected_table)
    assert torch.equal(model.text.positional_embedding_res, expected_table)
    # Positions 0-19 are the stock ones, so a caption ending before position 20 encodes exactly as before.
    ids = _caption_ids([4, 12, 20])
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(ids), stock.encode_text(ids[:, :77]))
        longer = _caption_ids([40])
        assert not torch.allclose(model.encode_text(longer), stock.encode_text(longer[:, :77]))
    bad = {k: v for k, v in stock.state_dict().items() if k != "positional_embedding"}
    bad["positional_embedding_res"] = torch.zeros(248, 64)
    torch.save(bad, path)
    with pytest.raises(CheckpointError, match="positional_embedding_res but no"):
        open_clip.create_model("tiny-clip-longclip-248", pretrained=str(path))


def test_first_twenty_positions_get_no_gradient_and_survive_an_optimizer_step(tmp_path):
    model = open_clip.create_model("tiny-clip-longclip-248")
    model.requires_grad_(True)  # even a trainer that unfreezes everything cannot reach the kept rows
    assert "text.positional_embedding" not in dict(model.named_parameters())
    before = model.text.position_table().detach().clone()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    images, ids = torch.randn(3, 3, 32, 32), _caption_ids([10, 60, 200])
    image_features, text_features, scale = model(images, ids)
    logits = scale * image_features @ text_features.T
    loss = F.cross_entropy(logits, torch.arange(3)) + F.cross_entropy(logits.T, torch.arange(3))
    loss.backward()
    grad = model.text.positional_embedding_res.grad
    assert torch.count_nonzero(grad[:KEEP]) == 0
    assert torch.count_nonzero(grad[KEEP:200]) > 0
    optimizer.step()
    after = model.text.position_table().detach()
    assert torch.equal(after[:KEEP], before[:KEEP])
    assert not torch.allclose(after[KEEP:], before[KEEP:])
    model.lock_text_tower()
    assert not model.text.positional_embedding_res.requires_grad


def test_longclip_configs_and_derivation():
    for base in ("ViT-B-16", "ViT-L-14"):
        cfg = open_clip.get_model_config(f"{base}-longclip-248")
        assert cfg == open_clip_ext.derive_config(base, "longclip", 248)
        assert cfg["text_cfg"]["context_length"] == 248 and cfg["custom_text"]
        assert open_clip.get_model_config(f"LongCLIP-{base}")["quick_gelu"] is True
        assert "openai" in open_clip.list_pretrained_tags_by_model(f"{base}-longclip-248")
    name = open_clip_ext.register_variant("tiny-clip", "longclip", 130)
    assert name == "tiny-clip-longclip-130"
    model = open_clip.create_model(name)
    assert model.text.position_table().shape == (130, 64)
    assert open_clip.get_tokenizer(name).context_length == 130


def _linear_resize_reference(table, length):
    """F.interpolate(mode='linear', align_corners=False) written out: sample at (r + 0.5) * old / new - 0.5."""
    old = table.shape[0]
    rows = []
    for r in range(length):
        x = min(max((r + 0.5) * old / length - 0.5, 0.0), old - 1)
        lo = min(int(math.floor(x)), old - 2)
        w = x - lo
        rows.append(table[lo] * (1 - w) + table[lo + 1] * w)
    return torch.stack(rows)


def test_uniform_baseline_is_open_clips_force_context_length(tmp_path):
    stock = open_clip.create_model("tiny-clip").eval()
    path = tmp_path / "stock.pt"
    torch.save(stock.state_dict(), path)
    named = open_clip.create_model("tiny-clip-uniform-248", pretrained=str(path)).eval()
    forced = open_clip.create_model("tiny-clip", pretrained=str(path), force_context_length=248).eval()
    assert type(named) is type(stock)  # a stock CLIP: open_clip's own loader resized the positions
    torch.testing.assert_close(named.positional_embedding,
                               _linear_resize_reference(stock.positional_embedding.detach(), 248))
    ids = _caption_ids([10, 120, 248])
    with torch.no_grad():
        assert torch.equal(named.encode_text(ids), forced.encode_text(ids))
    assert open_clip.get_tokenizer("ViT-L-14-uniform-248").context_length == 248
    assert "openai" in open_clip.list_pretrained_tags_by_model("ViT-L-14-uniform-248")


def test_one_table_compares_stock_uniform_longclip_and_rope(tmp_path):
    """The evaluation CLI takes every kind side by side: Long-CLIP weights (QuickGELU config, as shipped for
    LongCLIP-ViT-L-14), the uniform baseline, a RoPE student and the stock model."""
    from support.benchmark_fixtures import make_urban1k
    from support.naive_retrieval import naive_metrics
    from PIL import Image
    from training_ext.eval.runner import main as evaluate

    cfg = open_clip_ext.derive_config("tiny-clip", "longclip", 248)
    cfg["quick_gelu"] = True
    open_clip_ext.configs.register_model_config("LongCLIP-tiny-clip", cfg)
    longclip_path, stock_path = tmp_path / "longclip.pt", tmp_path / "stock.pt"
    longclip_state = _random_longclip_checkpoint(longclip_path)
    torch.save(open_clip.create_model("tiny-clip").state_dict(), stock_path)
    root, data = make_urban1k(str(tmp_path / "urban"), count=6)
    specs = [f"tiny-clip:{stock_path}", f"tiny-clip-uniform-248:{stock_path}", f"LongCLIP-tiny-clip:{longclip_path}",
             f"tiny-clip-rope-248:{stock_path}"]
    results = evaluate(["--models", *specs, "--urban1k", root, "--output-dir", str(tmp_path / "out"),
                        "--workers", "0", "--no-progress"])
    table = open(tmp_path / "out" / "results.md").read()
    assert all(spec in table for spec in specs)
    for spec, result in zip(specs, results):
        name, _, weights = spec.partition(":")
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=weights)
        tokenizer = open_clip.get_tokenizer(name)
        with torch.no_grad():
            images = torch.cat([model.eval().encode_image(preprocess(Image.open(p).convert("RGB"))[None],
                                                          normalize=True) for p in data["image_paths"]])
            texts = torch.cat([model.encode_text(tokenizer([c]), normalize=True) for c in data["captions"]])
        expected, _, _ = naive_metrics(images @ texts.T, data["caption_image"])
        assert result["model"] == spec and result["metrics"] == pytest.approx(expected, abs=1e-6)
        assert tokenizer.context_length == (77 if name == "tiny-clip" else 248)
        if name == "LongCLIP-tiny-clip":  # the row holds Long-CLIP's own text features
            ids = tokenizer(data["captions"][:2])
            naive = torch.stack([naive_longclip_text(longclip_state, row, heads=4) for row in ids])
            torch.testing.assert_close(F.normalize(naive, dim=-1).float(), texts[:2], atol=1e-5, rtol=1e-4)
