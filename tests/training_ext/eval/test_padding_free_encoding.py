"""Padding-free caption encoding in evaluation (training_ext.eval.features.encode_captions): each distinct caption
encoded once, sorted by length, every batch cut to its longest caption, features back in input order.

References are computed here, independently: the padded encoding one caption at a time (open_clip's tokenizer at the
full context, ``model.encode_text``), caption lengths from the tokenizer's own ids at a long context, and the
batches a padded file-order loop feeds the model."""
import json

import pytest
import torch

from support.benchmark_fixtures import make_urban1k
from support.data_prep_fixtures import load_script
from support.naive_retrieval import build_model, naive_text_features
from support.naive_towers import randomize_
from training_ext.eval.features import encode_captions


@pytest.fixture(scope="module")
def captions(tmp_path_factory):
    """Fixture captions of ~11, ~95, ~175 and ~265 tokens, in an order that is not sorted by length, and short ones."""
    _, data = make_urban1k(str(tmp_path_factory.mktemp("urban")), count=8)
    return data["captions"][::-1] + ["a dog.", "two red cars on a wet street at night."]


def _model(name):
    model, _, tokenizer = build_model(name)
    randomize_(model.text if hasattr(model, "text") else model, scale=0.3)  # no near-constant features
    return model, tokenizer


def _record_inputs(model):
    """(list the text tower's input batches are appended to, hook handle)."""
    seen = []
    tower = model.text if hasattr(model, "text") else model.token_embedding  # both read the ids
    return seen, tower.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].clone()))


def _own_ids(tokenizer, caption):
    """A caption's ids at the model's context up to its end token (open_clip's tokenizer pads with 0)."""
    ids = tokenizer([caption])[0]
    return ids[:int((ids != 0).sum())].tolist()


def _untruncated_counts(tokenizer, captions):
    return (tokenizer(captions, context_length=1000) != 0).sum(dim=1).tolist()


@pytest.mark.parametrize("name", ["tiny-clip-rope-248", "tiny-clip-cope-248"])
def test_features_equal_the_padded_encoding_in_input_order(name, captions):
    model, tokenizer = _model(name)
    seen, hook = _record_inputs(model)
    features, counts = encode_captions(model, tokenizer, captions, batch_size=3, workers=0, show_progress=False)
    hook.remove()
    reference = naive_text_features(model, tokenizer, captions)
    torch.testing.assert_close(features, reference, atol=1e-5, rtol=0)
    # the comparison can tell the captions apart, so it checks the order too
    distances = torch.cdist(reference, reference) + torch.eye(len(captions)) * 10
    assert distances.min() > 1e-2
    assert counts == _untruncated_counts(tokenizer, captions)  # per caption, in input order, untruncated
    # sorted by length, every batch as wide as its longest caption (not the 248-token context)
    lengths = sorted(len(_own_ids(tokenizer, c)) for c in captions)
    assert [batch.shape[1] for batch in seen] == [max(lengths[i:i + 3]) for i in range(0, len(lengths), 3)]


@pytest.mark.parametrize("name", ["tiny-clip-rope-248", "tiny-clip-cope-248"])
def test_bf16_autocast_features_stay_within_bf16_rounding_of_the_padded_ones(name, captions):
    """Measured on CPU (bench_eval --padding-free --precision amp_bf16, 512 captions per mix): up to 3.9e-3 (RoPE)
    and 4.9e-4 (CoPE), about one bf16 step at 1 (2^-8); 1e-2 leaves room for other CPUs' kernels."""
    model, tokenizer = _model(name)
    features, _ = encode_captions(model, tokenizer, captions, batch_size=3, workers=0, precision="amp_bf16",
                                  show_progress=False)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        reference = torch.cat([model.encode_text(tokenizer([c]), normalize=True).float() for c in captions])
    torch.testing.assert_close(features, reference, atol=1e-2, rtol=0)


def test_identical_captions_are_encoded_once_and_get_bit_identical_features(captions):
    model, tokenizer = _model("tiny-clip-rope-248")
    short, long, middle = captions[-2], captions[0], captions[2]
    given = [short, long, short, middle, long, short, middle]  # every copy lands in another batch of 2 in file order
    seen, hook = _record_inputs(model)
    features, counts = encode_captions(model, tokenizer, given, batch_size=2, workers=0, show_progress=False)
    hook.remove()
    rows = [row[:int((row != 0).sum())].tolist() for batch in seen for row in batch]
    assert sorted(rows) == sorted(_own_ids(tokenizer, c) for c in (short, long, middle))  # each distinct one once
    for copies in ([0, 2, 5], [1, 4], [3, 6]):
        for index in copies[1:]:
            assert torch.equal(features[index], features[copies[0]])
    torch.testing.assert_close(features, naive_text_features(model, tokenizer, given), atol=1e-5, rtol=0)
    assert counts == _untruncated_counts(tokenizer, given)


@pytest.mark.parametrize("name, padding_free", [("tiny-clip", True), ("tiny-clip-rope-248", False)])
def test_an_untrimmable_tower_or_padding_free_off_runs_the_padded_file_order_path(name, padding_free, captions):
    """A stock tower (learned position table) cannot be trimmed: its captions run as before, in file order, every
    batch at the full context, duplicates included, with the features of that loop."""
    model, tokenizer = _model(name)
    given = captions + captions[:2]
    seen, hook = _record_inputs(model)
    features, counts = encode_captions(model, tokenizer, given, batch_size=4, workers=0, show_progress=False,
                                       padding_free=padding_free)
    hook.remove()
    batches = [tokenizer(given[i:i + 4]) for i in range(0, len(given), 4)]
    assert len(seen) == len(batches) and all(torch.equal(a, b) for a, b in zip(seen, batches))
    with torch.no_grad():
        reference = torch.cat([model.encode_text(batch, normalize=True) for batch in batches])
    assert torch.equal(features, reference)
    assert counts == _untruncated_counts(tokenizer, given)


def test_bench_eval_padding_free_mode_runs_both_sides_on_both_length_mixes(tmp_path):
    report = load_script("bench_eval").main(["--padding-free", "--captions", "6", "--repeats", "1", "--workers",
                                             "0", "--output", str(tmp_path / "bench.json")])
    assert report["model"] == "tiny-clip-rope-248" and report["trims_padding_exactly"]
    assert list(report["mixes"]) == ["coco-like", "sharegpt4v-like"]
    coco, sharegpt = report["mixes"]["coco-like"], report["mixes"]["sharegpt4v-like"]
    assert 12 <= coco["tokens_min"] <= coco["tokens_max"] <= 18
    assert 100 <= sharegpt["tokens_min"] <= sharegpt["tokens_max"] <= 248
    for mix in (coco, sharegpt):
        assert mix["padded_captions_per_s"] > 0 and mix["padding_free_captions_per_s"] > 0
        assert mix["max_abs_diff"] <= 1e-5 and isinstance(mix["met"], bool)
        assert mix["ratio"] == pytest.approx(mix["padding_free_captions_per_s"] / mix["padded_captions_per_s"],
                                             rel=0.05)
    assert json.load(open(tmp_path / "bench.json"))["mixes"]["coco-like"]["ratio"] == coco["ratio"]
