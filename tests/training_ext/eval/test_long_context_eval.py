"""`python -m training_ext.eval --context-length 512 --position-scaling ...` on a tiny RoPE checkpoint trained at
248: every number equals a naive one-caption-at-a-time recomputation with the tower read at 512, the protocol card
records the scaling and the long-caption counts, CoPE and absolute-position towers are refused with the reason
before any model loads, and the loader still refuses a checkpoint whose position settings differ."""
import json
import os
import random

import open_clip
import pytest
import torch

from open_clip_ext.convert import CheckpointError
from support.benchmark_fixtures import caption_text, make_long_dci, write_image
from support.naive_retrieval import naive_image_features, naive_metrics, naive_text_features
from training_ext.eval.runner import main

MODEL = "tiny-clip-rope-248"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("long_eval")
    csv_path, expected = make_long_dci(str(tmp / "dci"), count=4)
    rng = random.Random(11)  # one caption past 512 tokens, so every count the card reports can be wrong
    image = os.path.join(str(tmp / "dci"), "photos", "sa_long.jpg")
    write_image(image, rng)
    caption = caption_text(rng, 9, 560)
    with open(csv_path, "a") as f:
        f.write(f"photos/sa_long.jpg\t{caption}\n")
    expected = {"image_paths": expected["image_paths"] + [image], "captions": expected["captions"] + [caption],
                "caption_image": list(range(5))}
    torch.manual_seed(123)
    checkpoint = str(tmp / "stage2.pt")
    torch.save({"epoch": 1, "state_dict": open_clip.create_model(MODEL).state_dict(),
                "model_cfg": open_clip.get_model_config(MODEL)}, checkpoint)
    return {"csv": csv_path, "expected": expected, "checkpoint": checkpoint, "tmp": tmp}


def _run(files, model, *extra):
    out = str(files["tmp"] / f"out-{len(os.listdir(files['tmp']))}")
    results = main(["--model", model, "--long-dci", files["csv"], "--output-dir", out, "--workers", "0",
                    "--batch-size", "2", "--text-batch-size", "2", "--no-progress", *extra])
    return results, out


@pytest.mark.parametrize("kind", ["none", "ntk", "yarn"])
def test_rope_checkpoint_read_at_512_with_each_scaling(files, kind, loads):
    spec = f"{MODEL}:{files['checkpoint']}"
    (result,), out = _run(files, spec, "--context-length", "512", "--position-scaling", kind)
    # naive: the checkpoint as trained, read at 512 by the tower's own hook, one caption at a time
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL, pretrained=files["checkpoint"])
    model.eval().text.set_position_scaling(kind, 512)
    tokenizer = open_clip.get_tokenizer(MODEL, context_length=512)
    data = files["expected"]
    similarity = (naive_image_features(model, preprocess, data["image_paths"])
                  @ naive_text_features(model, tokenizer, data["captions"]).t())
    expected, _, _ = naive_metrics(similarity, data["caption_image"])
    for key, value in expected.items():
        assert result["metrics"][key] == pytest.approx(value), key
    scaling = {"kind": kind, "trained_length": 248, "context_length": 512}
    card = result["protocol_card"]
    assert card["position_scaling"] == scaling and result["position_scaling"] == scaling
    assert card["context_length"] == result["context_length"] == 512
    lengths = [len(tokenizer.encode(c)) + 2 for c in data["captions"]]  # + start and end tokens
    assert card["captions_over"] == {"248": sum(n > 248 for n in lengths), "512": sum(n > 512 for n in lengths)}
    assert card["captions_over"]["512"] == 1 and card["captions_over_context"] == 1
    saved = json.load(open(os.path.join(out, "results.json")))
    assert saved["models"][0]["position_scaling"] == scaling
    assert f"read at 512 with position scaling {kind}" in open(os.path.join(out, "results.md")).read()
    assert loads == [spec]


def test_without_context_length_the_card_has_no_scaling_but_counts_long_captions(files):
    (result,), _ = _run(files, MODEL)
    card = result["protocol_card"]
    assert card["position_scaling"] is None and card["context_length"] == 248
    assert card["captions_over"]["512"] == 1 and card["captions_over"]["248"] == card["captions_over_context"]


@pytest.mark.parametrize("model, reason", [
    ("tiny-clip-cope-248", "CoPE tower: its per-layer position table has 248 entries"),
    ("tiny-clip-longclip-248", "absolute positions from a table of 248 rows"),
    ("tiny-clip", "absolute positions from a table of 77 rows")])
def test_cope_and_absolute_towers_are_refused_before_any_model_loads(files, model, reason, loads, capsys):
    with pytest.raises(SystemExit) as stop:
        _run(files, model, "--context-length", "512")
    assert stop.value.code == 2 and loads == []
    err = capsys.readouterr().err
    assert f"--model {model} cannot be read at --context-length 512" in err and reason in err


def test_scaling_without_context_length_is_a_flag_error(files, capsys):
    with pytest.raises(SystemExit):
        _run(files, MODEL, "--position-scaling", "yarn")
    assert "give --context-length N too" in capsys.readouterr().err


def test_loader_still_refuses_other_position_settings(files):
    other = str(files["tmp"] / "theta.pt")
    cfg = open_clip.get_model_config(MODEL)
    cfg["text_cfg"] = {**cfg["text_cfg"], "rope_theta": 500000.0}
    torch.save({"state_dict": open_clip.create_model(MODEL).state_dict(), "model_cfg": cfg}, other)
    with pytest.raises(CheckpointError, match="rope_theta: checkpoint 500000.0 vs model 10000.0"):
        _run(files, f"{MODEL}:{other}", "--context-length", "512", "--position-scaling", "ntk")
