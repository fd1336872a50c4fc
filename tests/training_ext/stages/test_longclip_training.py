"""Stage 2 the Long-CLIP way: a <base>-longclip-248 model, PCM short-caption loss, label smoothing."""
import open_clip
import pytest
import torch
from contextlib import nullcontext

from open_clip_ext.longclip import stretch_positions
from support.naive_losses import naive_pca_reconstruct, naive_smoothed_clip_loss
from training_ext import main_context_finetune_rope
from training_ext.stages.finetune import ClipFeatures, clip_loss_for, make_finetune_step, short_caption_loss_for
from support.training_helpers import base_args, long_caption, save_stock_teacher, write_csv

LONGCLIP = "tiny-clip-longclip-248"
# 2 components: the runs below give the PCA at least 4 image features, so it leaves out at least one component
FLAGS = ["--short-caption-loss", "pcm", "--pcm-components", "2", "--short-caption-weight", "1",
         "--label-smoothing", "0.1"]


@pytest.mark.slow
def test_one_command_line_trains_longclip_with_pcm(tmp_path):
    stock = save_stock_teacher(str(tmp_path / "stock.pt"))
    train = write_csv(str(tmp_path / "train"), rows=8)
    argv = ["--model", LONGCLIP, "--pretrained", stock] + FLAGS + base_args(str(tmp_path / "logs"), "lc", train)
    state = main_context_finetune_rope.run(main_context_finetune_rope.parse_args(argv))
    assert state.step == 2
    stock_positions = open_clip.create_model("tiny-clip", pretrained=stock).positional_embedding.detach()
    start = stretch_positions(stock_positions, 248)
    table = state.model.text.position_table().detach()
    assert torch.equal(table[:20], start[:20])  # Long-CLIP's kept positions never move
    assert not torch.allclose(table[20:], start[20:])
    log = open(tmp_path / "logs" / "lc" / "out.log").read()
    assert "Short_loss" in log
    loaded = open_clip.create_model(LONGCLIP, pretrained=state.last_checkpoint)
    assert torch.equal(loaded.text.position_table(), table)


@pytest.mark.parametrize("accum", [1, 2])
def test_pcm_step_losses_match_a_naive_computation(accum):
    args = main_context_finetune_rope.parse_args(["--model", LONGCLIP] + FLAGS)
    args.rank, args.world_size = 0, 1
    torch.manual_seed(0)
    model = open_clip.create_model(LONGCLIP)
    features = ClipFeatures(model)
    clip_loss = clip_loss_for(args)
    step = make_finetune_step(features, features, clip_loss, 1.0, "cpu", None, nullcontext,
                              torch.amp.GradScaler("cpu", enabled=False), False,
                              short_loss=short_caption_loss_for(args, clip_loss))
    tokenize = open_clip.get_tokenizer(LONGCLIP)
    batches = []
    for part in range(accum):
        rows = range(part * 6, part * 6 + 6)
        batches.append((torch.rand(6, 3, 32, 32), tokenize([long_caption(i) for i in rows]),
                        tokenize([f"short {i}" for i in rows])))
    with torch.no_grad():
        image = torch.cat([model.encode_image(b[0], normalize=True) for b in batches]).double().numpy()
        long = torch.cat([model.encode_text(b[1], normalize=True) for b in batches]).double().numpy()
        short = torch.cat([model.encode_text(b[2], normalize=True) for b in batches]).double().numpy()
        scale = model.logit_scale.exp().item()
    losses = step(batches)
    expected_long = naive_smoothed_clip_loss(image, long, scale, 0.1)
    expected_short = naive_smoothed_clip_loss(naive_pca_reconstruct(image, 2), short, scale, 0.1)
    assert losses["long_loss"] == pytest.approx(expected_long, rel=1e-4)
    assert losses["short_loss"] == pytest.approx(expected_short, rel=1e-4)
    assert losses["loss"] == pytest.approx(expected_long + expected_short, rel=1e-4)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("batch, accum, refused", [(4, 1, True), (2, 2, True), (1, 4, True), (5, 1, False),
                                                   (1, 5, False), (3, 2, False)])
def test_pcm_is_refused_before_any_model_when_the_pca_batch_makes_it_the_clip_loss(batch, accum, refused, capsys,
                                                                                    monkeypatch):
    # the PCA sees --batch-size x --accum-freq features per process: at most components + 1 = 4 is refused
    monkeypatch.setattr(open_clip, "create_model", lambda *a, **k: pytest.fail("a model was built"))
    argv = ["--model", LONGCLIP, "--short-caption-loss", "pcm", "--pcm-components", "3", "--short-caption-weight",
            "1", "--batch-size", str(batch), "--accum-freq", str(accum)]
    if not refused:
        main_context_finetune_rope.parse_args(argv)
        return
    with pytest.raises(SystemExit):
        main_context_finetune_rope.parse_args(argv)
    seen = batch * accum
    assert (f"--pcm-components 3: the PCA sees --batch-size {batch} x --accum-freq {accum} = {seen} image features "
            f"per step and process; centred, they have rank at most {seen - 1} <= 3, so the 3-component "
            f"reconstruction is exact and the PCM loss equals the plain CLIP loss. Give --batch-size x --accum-freq "
            f"of at least 5") in capsys.readouterr().err


def test_pcm_with_as_many_components_as_feature_dimensions_is_refused(capsys):
    with pytest.raises(SystemExit):  # tiny-clip's features are 64-d: 64 components span every batch
        main_context_finetune_rope.parse_args(["--model", LONGCLIP, "--short-caption-loss", "pcm", "--pcm-components",
                                               "64", "--short-caption-weight", "1", "--batch-size", "128"])
    assert "has 64-d image features, so 64 components reconstruct every batch exactly" in capsys.readouterr().err


def test_pcm_flag_errors():
    with pytest.raises(SystemExit, match="pcm needs a --short-caption-weight above 0"):
        main_context_finetune_rope.parse_args(["--short-caption-loss", "pcm", "--short-caption-weight", "0"])
    with pytest.raises(SystemExit, match="--label-smoothing"):
        main_context_finetune_rope.parse_args(["--label-smoothing", "1.5"])
