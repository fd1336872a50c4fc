"""Caption-perturbation diagnostics: the perturbations themselves, their R@1 deltas on toy models whose answer is
known, and the end-to-end run (--perturb) checked against a naive recomputation."""
import json
import os
import re
from argparse import Namespace

import pytest
import torch
from PIL import Image

from training_ext.common.captions import first_sentence
from training_ext.eval.datasets import BENCHMARKS, RetrievalSet
from open_clip import SimpleTokenizer
from training_ext.eval.perturb import parse_perturbations, perturb_captions, split_sentences
from training_ext.eval.protocol_card import dataset_card
from training_ext.eval.runner import LoadedModel, ModelSpec, SelectedBenchmark, evaluate_retrieval, main

from support.benchmark_fixtures import make_urban1k
from support.naive_retrieval import build_model, naive_image_features, naive_metrics, naive_text_features


def test_sentences_and_the_three_perturbations():
    caption = "A red car. E.g. a truck is near. It is 3.5 m long!  Done."
    assert split_sentences(caption) == ["A red car.", "E.g. a truck is near.", "It is 3.5 m long!", "Done."]
    assert split_sentences("no end mark") == ["no end mark"]
    assert perturb_captions([caption], "first-sentence-removed") == ["E.g. a truck is near. It is 3.5 m long! Done."]
    assert perturb_captions(["One sentence only."], "first-sentence-removed") == [""]
    shuffled = perturb_captions([caption] * 5, "shuffled-sentences", seed=3)
    assert shuffled == perturb_captions([caption] * 5, "shuffled-sentences", seed=3)  # fixed seed
    assert all(sorted(split_sentences(s)) == sorted(split_sentences(caption)) for s in shuffled)
    assert len(set(shuffled)) > 1


def test_cut_keeps_what_a_77_token_model_sees():
    long = "The " + "very " * 120 + "END of it."
    short = "A Short caption, kept exactly."
    tokenizer = SimpleTokenizer()
    cut, kept = perturb_captions([long, short], "cut-77", tokenizer=tokenizer)
    assert kept == short
    assert (tokenizer([cut], context_length=1000) != 0).sum() == 77 and "end" not in cut
    assert cut == " ".join(["the"] + ["very"] * 74)  # 75 text tokens + start + end
    assert perturb_captions([long], "cut-10", tokenizer=tokenizer) == [" ".join(["the"] + ["very"] * 7)]
    with pytest.raises(ValueError, match="pass tokenizer"):
        perturb_captions([long], "cut-10")  # the cut counts with the evaluated model's tokenizer


@pytest.mark.parametrize("text", ["cut-2", "cut-x", "reversed", "cut-77,cut-77"])
def test_unknown_perturbations_are_refused(text):
    with pytest.raises(ValueError):
        parse_perturbations(text)


# ---------------------------------------------------------------------------------------------------------------
# toy models: image i is one-hot e_(i+1) (read from the image's red value); a caption's embedding is e_(n+1) for the
# number of the "item n" it mentions where the model looks (first sentence, or anywhere), else e_0 (ties everywhere)

class ToyTokenizer(SimpleTokenizer):
    """Toy ids; counting and cutting captions (cut-N, length buckets) read CLIP's BPE it inherits."""

    def __init__(self, only_first_sentence: bool):
        super().__init__()
        self.only_first_sentence = only_first_sentence

    def __call__(self, captions):
        ids = []
        for caption in captions:
            text = first_sentence(caption) if self.only_first_sentence else caption
            match = re.search(r"item (\d+)", text, flags=re.IGNORECASE)
            ids.append([int(match.group(1)) + 1 if match else 0])
        return torch.tensor(ids)


class ToyModel(torch.nn.Module):
    def __init__(self, count):
        super().__init__()
        self.count = count

    def encode_image(self, pixels, normalize=True):
        return torch.nn.functional.one_hot(pixels[:, 0].round().long() + 1, self.count + 1).float()

    def encode_text(self, ids, normalize=True):
        return torch.nn.functional.one_hot(ids[:, 0], self.count + 1).float()


def toy_preprocess(image):
    return torch.tensor([image.getpixel((0, 0))[0] / 20.0])


def toy_run(tmp_path, captions, only_first_sentence, perturbations, with_numbers=False):
    paths = []
    for i in range(len(captions)):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.new("RGB", (4, 4), (20 * i, 0, 0)).save(paths[-1])
    data = RetrievalSet(paths, captions, list(range(len(captions))))
    selected = SelectedBenchmark(BENCHMARKS["urban1k"], str(tmp_path), None, data,
                                 card=dataset_card(BENCHMARKS["urban1k"], data))
    loaded = LoadedModel(ModelSpec("toy", "toy", None), ToyModel(len(captions)), toy_preprocess,
                         ToyTokenizer(only_first_sentence), 77)
    args = Namespace(batch_size=4, text_batch_size=4, workers=0, device="cpu", precision="fp32", no_progress=True,
                     chunk_elements=7, tie_rule="against", bucket_edges=[77, 154, 248], perturbations=perturbations,
                     perturb_seed=0, bucket_by_column=None, column_edges=None)
    numbers = evaluate_retrieval(loaded, selected, args)
    if with_numbers:
        return numbers
    return numbers["metrics"], {p["perturbation"]: p for p in numbers["perturbations"]}


FIRST_SENTENCE_CAPTIONS = [f"Item {i} is here. A plain wall stands behind. The floor is grey." for i in range(6)]


def test_removing_the_first_sentence_of_a_first_sentence_model_drops_r1_to_zero(tmp_path):
    intact, perturbed = toy_run(tmp_path, FIRST_SENTENCE_CAPTIONS, True, ["first-sentence-removed"])
    assert intact["image_to_text_R@1"] == intact["text_to_image_R@1"] == 100.0
    removed = perturbed["first-sentence-removed"]
    # every caption now embeds as e_0: all scores tie at 0, and ties count against the model
    assert removed["delta_image_to_text_R@1"] == removed["delta_text_to_image_R@1"] == -100.0
    assert removed["captions_changed"] == 6 and removed["captions_emptied"] == 0


def test_the_tie_report_is_of_the_intact_captions(tmp_path):
    numbers = toy_run(tmp_path, FIRST_SENTENCE_CAPTIONS, True, ["first-sentence-removed"], with_numbers=True)
    # the perturbed captions tie everywhere (R@1 0 above), the intact ones nowhere: no R@1 is decided by a tie
    for direction in ("image_to_text", "text_to_image"):
        assert numbers["ties"][direction]["R@1"] == {"reported": 100.0, "optimistic": 100.0, "decided_by_ties": 0}


def test_shuffling_keeps_exactly_the_captions_whose_first_sentence_stays_first(tmp_path):
    _, perturbed = toy_run(tmp_path, FIRST_SENTENCE_CAPTIONS, True, ["shuffled-sentences"])
    shuffled = perturb_captions(FIRST_SENTENCE_CAPTIONS, "shuffled-sentences", seed=0)
    kept = sum(caption.startswith(f"Item {i} is here.") for i, caption in enumerate(shuffled))
    assert 0 < kept < 6  # the seed moves some first sentences and not others
    for direction in ("image_to_text", "text_to_image"):
        assert perturbed["shuffled-sentences"][f"delta_{direction}_R@1"] == pytest.approx(100 * kept / 6 - 100)


def test_cutting_to_77_tokens_loses_a_detail_stated_late(tmp_path):
    # even captions are short; odd ones state their item after 100 filler words
    captions = [f"Item {i} is here." if i % 2 == 0 else "filler " * 100 + f"Item {i} is here." for i in range(6)]
    intact, perturbed = toy_run(tmp_path, captions, False, ["cut-77", "first-sentence-removed"])
    assert intact["text_to_image_R@1"] == 100.0
    assert perturbed["cut-77"]["delta_text_to_image_R@1"] == -50.0
    assert perturbed["cut-77"]["delta_image_to_text_R@1"] == -50.0
    assert perturbed["cut-77"]["captions_changed"] == 3
    assert perturbed["first-sentence-removed"]["captions_emptied"] == 6  # every caption is one sentence


def test_end_to_end_deltas_match_a_naive_recomputation(tmp_path, capsys):
    root, data = make_urban1k(str(tmp_path / "urban"), count=8)
    names = ["first-sentence-removed", "shuffled-sentences", "cut-77"]
    out = tmp_path / "out"
    main(["--model", "tiny-clip-rope-248", "--urban1k", root, "--perturb", ",".join(names), "--perturb-seed", "5",
          "--output-dir", str(out), "--workers", "0", "--no-progress"])
    result = json.loads((out / "results.json").read_text())["results"][0]
    model, preprocess, tokenizer = build_model("tiny-clip-rope-248")
    images = naive_image_features(model, preprocess, data["image_paths"])

    def r1(captions):
        metrics, _, _ = naive_metrics(images @ naive_text_features(model, tokenizer, captions).t(),
                                      data["caption_image"], ks=(1,))
        return metrics

    intact = r1(data["captions"])
    for row, name in zip(result["perturbations"], names):
        expected = r1(perturb_captions(data["captions"], name, seed=5, tokenizer=tokenizer))
        assert row["perturbation"] == name
        for key in ("image_to_text_R@1", "text_to_image_R@1"):
            assert row[f"delta_{key}"] == pytest.approx(expected[key] - intact[key], abs=1e-6), (name, key)
    printed = capsys.readouterr().out
    assert "Caption perturbations" in printed and "dT2I cut-77" in printed
    assert "dI2T first-sentence-removed" in (out / "results.md").read_text()
    with open(out / "caption_perturbations.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.isfile(out / "recall_by_length.png")
