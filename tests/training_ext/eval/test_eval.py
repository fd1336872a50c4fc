"""End-to-end `python -m training_ext.eval` on tiny models and fixtures, checked against a naive
one-item-at-a-time recomputation of every number."""
import json
import os

import open_clip
import pytest
import torch

from training_ext.eval.runner import main, parse_model_spec
from training_ext.eval.features import encode_captions, encode_images

from support.benchmark_fixtures import make_coco, make_flickr30k, make_imagenet, make_urban1k
from support.data_prep_fixtures import load_script
from support.naive_retrieval import (build_model, naive_image_features, naive_metrics, naive_rank,
                                    naive_text_features)


def naive_zero_shot_ranks(model, tokenizer, preprocess, data):
    """Class embedding = normalised mean of the normalised template embeddings, one text at a time."""
    class_features = []
    for classname in data["classnames"]:
        texts = [template(classname) for template in open_clip.OPENAI_IMAGENET_TEMPLATES]
        mean = naive_text_features(model, tokenizer, texts).mean(dim=0)
        class_features.append(mean / mean.norm())
    scores = (naive_image_features(model, preprocess, data["image_paths"]) @ torch.stack(class_features).t()).tolist()
    return [naive_rank(row, [j == label for j in range(len(row))]) for row, label in zip(scores, data["labels"])]


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    urban_root, urban = make_urban1k(str(tmp / "urban"), count=8)
    coco_root, coco = make_coco(str(tmp / "coco"))
    flickr = make_flickr30k(str(tmp / "flickr"))
    imagenet_root, imagenet = make_imagenet(str(tmp / "imagenet"))
    # an open_clip_train-style checkpoint holding weights other than the seed-0 random ones
    checkpoint = str(tmp / "epoch_1.pt")
    torch.manual_seed(123)
    torch.save({"epoch": 1, "name": "test", "state_dict": open_clip.create_model("tiny-clip").state_dict()},
               checkpoint)
    out = str(tmp / "out")
    models = ["tiny-clip", f"tiny-clip:{checkpoint}", "tiny-clip-rope-248"]
    results = main(["--model", models[0], "--models", *models[1:],
                    "--urban1k", urban_root, "--coco-5k", coco_root,
                    "--flickr30k-karpathy-1k", flickr["karpathy"], "--flickr30k-images", flickr["image_dir"],
                    "--imagenet", imagenet_root, "--output-dir", out, "--workers", "0",
                    "--batch-size", "3", "--text-batch-size", "4", "--chunk-elements", "10", "--no-progress"])
    data = {"urban1k": urban, "coco-5k": coco, "flickr30k-karpathy-1k": flickr["expected_karpathy"],
            "imagenet": imagenet}
    return {"results": results, "out": out, "data": data, "models": models, "checkpoint": checkpoint}


def test_every_number_matches_naive_recomputation(eval_run):
    by_key = {(r["model"], r["benchmark"]): r for r in eval_run["results"]}
    assert len(by_key) == 3 * 4
    for spec in eval_run["models"]:
        name, checkpoint = parse_model_spec(spec).name, parse_model_spec(spec).pretrained
        model, preprocess, tokenizer = build_model(name, seed=0, checkpoint=checkpoint)
        for benchmark, data in eval_run["data"].items():
            result = by_key[(spec, benchmark)]
            if benchmark == "imagenet":
                ranks = naive_zero_shot_ranks(model, tokenizer, preprocess, data)
                expected = {"top1": 100.0 * sum(r < 1 for r in ranks) / len(ranks),
                            "top5": 100.0 * sum(r < 5 for r in ranks) / len(ranks)}
                assert result["num_classes"] == 3
            else:
                similarity = (naive_image_features(model, preprocess, data["image_paths"])
                              @ naive_text_features(model, tokenizer, data["captions"]).t())
                expected, _, _ = naive_metrics(similarity, data["caption_image"])
                assert result["num_captions"] == len(data["captions"])
            assert result["metrics"] == pytest.approx(expected, abs=1e-6), (spec, benchmark)


def test_models_checkpoints_and_context_are_reported(eval_run):
    saved = json.load(open(os.path.join(eval_run["out"], "results.json")))
    assert saved["results"] == json.loads(json.dumps(eval_run["results"]))
    assert [(m["model"], m["context_length"]) for m in saved["models"]] == list(zip(eval_run["models"], [77, 77, 248]))
    assert saved["models"][1]["checkpoint"] == os.path.abspath(eval_run["checkpoint"])
    urban = {r["model"]: r for r in saved["results"] if r["benchmark"] == "urban1k"}
    # fixture captions cycle through ~11, ~95, ~175 and ~265 tokens
    assert urban["tiny-clip"]["captions_over_context"] == 6
    assert urban["tiny-clip-rope-248"]["captions_over_context"] == 2
    buckets = urban["tiny-clip"]["recall_by_length"]
    assert [b["bucket"] for b in buckets] == ["<=77", "78-154", "155-248", ">248"]
    assert [b["num_captions"] for b in buckets] == [2, 2, 2, 2]
    assert {r["caption_length_tokenizer"] for r in urban.values()} == {"SimpleTokenizer"}  # counted by each model's
    assert {r["protocol"] for r in saved["results"] if r["benchmark"] == "flickr30k-karpathy-1k"} == {
        next(r["protocol"] for r in saved["results"] if r["benchmark"] == "flickr30k-karpathy-1k")}


def test_table_markdown_and_plot_are_written(eval_run, capsys):
    markdown = open(os.path.join(eval_run["out"], "results.md")).read()
    for spec in eval_run["models"]:
        assert spec in markdown
    assert "flickr30k-karpathy-1k" in markdown and "ZS top-1" in markdown
    with open(os.path.join(eval_run["out"], "recall_by_length.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_batched_encoding_with_workers_matches_one_at_a_time(tmp_path):
    _, data = make_urban1k(str(tmp_path), count=5)
    model, preprocess, tokenizer = build_model("tiny-clip-rope-248")
    images = encode_images(model, preprocess, data["image_paths"], batch_size=2, workers=1, show_progress=False)
    texts, counts = encode_captions(model, tokenizer, data["captions"], batch_size=2, workers=1, show_progress=False)
    assert torch.allclose(images, naive_image_features(model, preprocess, data["image_paths"]), atol=1e-5)
    assert torch.allclose(texts, naive_text_features(model, tokenizer, data["captions"]), atol=1e-5)
    assert counts == (tokenizer(data["captions"], context_length=1000) != 0).sum(dim=1).tolist()  # CLIP pads with 0


def test_model_spec_parsing():
    assert (parse_model_spec("ViT-L-14:openai").name, parse_model_spec("ViT-L-14:openai").pretrained) == (
        "ViT-L-14", "openai")
    assert parse_model_spec("tiny-clip").pretrained is None
    assert parse_model_spec("tiny-clip-rope-248:/a/b:c.pt").pretrained == "/a/b:c.pt"
    assert (parse_model_spec("hf-hub:org/repo").name, parse_model_spec("hf-hub:org/repo").pretrained) == (
        "hf-hub:org/repo", None)


def test_bad_benchmark_path_fails_before_any_model_loads(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("training_ext.eval.runner.load_model", lambda *a: pytest.fail("a model was loaded"))
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", "tiny-clip", "--urban1k", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "error: Urban1k caption folder not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_help_and_argument_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for flag in ("--urban1k", "--sharegpt4v-10k", "--flickr30k-full-31k", "--imagenet", "--output-dir"):
        assert flag in help_text
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", "tiny-clip"])  # no benchmark
    assert exit_info.value.code == 2


def test_bench_script_runs_and_its_two_sides_agree(tmp_path):
    report = load_script("bench_eval").main([
        "--pairs", "12", "--repeats", "1", "--workers", "0", "--image-size", "16",
        "--fixture-dir", str(tmp_path), "--output", str(tmp_path / "bench.json")])
    assert report["max_recall_difference"] == 0.0
    assert report["eval_items_per_second"] > 0 and report["naive_items_per_second"] > 0
    assert json.load(open(tmp_path / "bench.json"))["speedup"] == report["speedup"]
