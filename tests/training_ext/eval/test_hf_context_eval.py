"""The Hugging Face layout end to end: a tiny local XLM-R text tower's ``<base>-context-120`` variant fine-tuned
one stage-2 step from its base, then evaluated from that checkpoint (``python -m training_ext.eval --model
NAME:CKPT --csv ...``, in-process). Nothing is downloaded: tower and word-level tokenizer are local folders."""
import json
import os
import random

import open_clip
import pytest
import torch

from open_clip_ext.configs import register_model_config
from support.benchmark_fixtures import write_image
from support.model_registry import restored_registry  # noqa: F401  (fixture)
from support.naive_retrieval import build_model, naive_image_features, naive_metrics, naive_text_features
from support.non_clip_tokenizers import (HF_TOWER_LAYOUT, save_tiny_hf_tower, save_tokenizer, tiny_hf_clip_config,
                                         vocab_size)
from support.training_helpers import base_args, checkpoint_state, write_csv
from training_ext import main_context_finetune_rope
from training_ext.eval.runner import main

pytestmark = pytest.mark.usefixtures("restored_registry")

WORDS = [f"w{i}" for i in range(150)]
CONTEXT = 120
# caption word counts (each caption is <s> words </s>): three past the base's 77 tokens but within 120, one cut
# by 130 + 2 - 120 = 12 tokens
LENGTHS = (100, 110, 118, 130)


def _held_out(root: str):
    rng, rows, images, captions = random.Random(0), [], [], []
    for index, length in enumerate(LENGTHS):
        image = os.path.join(root, "images", f"{index}.png")
        write_image(image, rng)
        caption = " ".join(WORDS[index:index + length] if index + length <= len(WORDS) else WORDS[-length:])
        rows.append(f"{image}\t{caption}")
        images.append(image)
        captions.append(caption)
    path = os.path.join(root, "held_out.csv")
    with open(path, "w") as handle:
        handle.write("filepath\ttitle\n" + "\n".join(rows) + "\n")
    return path, images, captions


def test_a_context_variant_fine_tuned_one_stage2_step_is_evaluated_at_its_context(tmp_path, capsys):
    folder = str(tmp_path / "hf")
    save_tokenizer(folder, HF_TOWER_LAYOUT["xlm-roberta"], [" ".join(WORDS)])
    save_tiny_hf_tower(folder, "xlm-roberta", vocab=vocab_size(folder), max_positions=130)
    base = "hfctx-eval-xlm-roberta"
    register_model_config(base, tiny_hf_clip_config(folder, "xlm-roberta-base-ViT-B-32"))
    torch.manual_seed(0)
    torch.save({"state_dict": open_clip.create_model(base).state_dict()}, tmp_path / "base.pt")
    name = f"{base}-context-{CONTEXT}"
    train = write_csv(str(tmp_path / "train"), rows=2)
    state = main_context_finetune_rope.run(main_context_finetune_rope.parse_args(
        ["--model", name, "--pretrained", str(tmp_path / "base.pt")]
        + base_args(str(tmp_path / "logs"), "s2", train, batch_size=2)))
    assert state.step == 1 and state.last_checkpoint and os.path.exists(state.last_checkpoint)
    checkpoint = state.last_checkpoint

    csv_path, images, captions = _held_out(str(tmp_path / "data"))
    main(["--model", f"{name}:{checkpoint}", "--csv", f"held-out={csv_path}", "--workers", "0", "--no-progress",
          "--device", "cpu", "--output-dir", str(tmp_path / "out")])
    result = json.loads((tmp_path / "out" / "results.json").read_text())["results"][0]
    card = result["protocol_card"]
    assert result["context_length"] == card["context_length"] == CONTEXT
    assert (card["captions_over_context"], card["mean_tokens_cut"]) == (1, 130 + 2 - CONTEXT)
    assert f"context:        {CONTEXT} tokens; 1 captions longer, cut by 12.0 tokens" in capsys.readouterr().out
    assert f"context:        {CONTEXT} tokens" in (tmp_path / "out" / "results.md").read_text()

    # the test's own computation on the fine-tuned weights at 120 tokens: the metrics the runner wrote
    model, preprocess, tokenizer = build_model(name, checkpoint=checkpoint)
    trained = checkpoint_state(checkpoint)["state_dict"]
    key = "text.transformer.embeddings.word_embeddings.weight"
    assert torch.equal(model.state_dict()[key], next(v for k, v in trained.items() if k.endswith(key)))
    assert not torch.equal(model.state_dict()[key], torch.load(tmp_path / "base.pt")["state_dict"][key])  # trained
    assert tokenizer(captions).shape == (len(captions), CONTEXT)
    similarity = naive_image_features(model, preprocess, images) @ naive_text_features(model, tokenizer, captions).T
    expected, _, _ = naive_metrics(similarity, list(range(len(images))))
    assert (result["num_images"], result["num_captions"]) == (4, 4)
    assert result["metrics"] == pytest.approx(expected)
