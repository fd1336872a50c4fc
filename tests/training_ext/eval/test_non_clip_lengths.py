"""Evaluation of MetaCLIP-2-like models (tokenizers whose special ids are not CLIP's): caption lengths, the length
buckets, the context card and cut-N count the model's own tokens, and the padding-free encoding of a RoPE model
gives its padded features. Every count is checked against the ``tokenizers`` library run on the tokenizer file."""
import os
from argparse import Namespace

import pytest
import torch
from tokenizers import Tokenizer

from support.benchmark_fixtures import make_urban1k
from support.naive_retrieval import build_model, naive_text_features
from support.non_clip_tokenizers import (LAYOUTS, METACLIP2_LAYOUTS, register_metaclip2, save_tokenizer, unregister,
                                         vocab_size)
from training_ext.eval.datasets import BENCHMARKS, RetrievalSet
from training_ext.eval.length_buckets import token_counts, tokenize_and_count
from training_ext.eval.perturb import perturb_captions
from training_ext.eval.protocol_card import dataset_card
from training_ext.eval.runner import LoadedModel, ModelSpec, SelectedBenchmark, evaluate_retrieval


@pytest.fixture(params=list(METACLIP2_LAYOUTS))
def metaclip2(request, tmp_path):
    """(layout, tokenizer folder, {context: model name}, Urban1k-style benchmark data) for one layout."""
    layout = request.param
    root, data = make_urban1k(str(tmp_path / "bench"), count=8)
    folder = save_tokenizer(str(tmp_path / "tokenizer"), layout, data["captions"])
    names = register_metaclip2(f"metaclip2-{layout}-eval-{tmp_path.name}", folder, layout, vocab_size(folder))
    yield layout, folder, dict(zip((77, 248), names)), root, data
    unregister(*names)


def _reference_ids(folder, tokenizer, captions):
    """Each caption's untruncated ids from the tokenizer file itself (after the open_clip wrapper's cleaning)."""
    reference = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    return [reference.encode(tokenizer.clean_fn(caption)).ids for caption in captions]


def test_lengths_and_model_input_are_the_tokenizers_own(metaclip2):
    layout, folder, names, _, data = metaclip2
    _, _, tokenizer = build_model(names[248])
    reference = _reference_ids(folder, tokenizer, data["captions"])
    end_id = LAYOUTS[layout][3]
    assert all(ids[-1] == end_id for ids in reference)
    assert token_counts(tokenizer, data["captions"]) == [len(ids) for ids in reference]
    ids, counts = tokenize_and_count(tokenizer, data["captions"])
    assert torch.equal(ids, tokenizer(data["captions"])) and counts == [len(ids) for ids in reference]


def test_buckets_and_context_card_count_the_models_tokens(metaclip2):
    layout, folder, names, root, data = metaclip2
    benchmark, retrieval = BENCHMARKS["urban1k"], RetrievalSet(data["image_paths"], data["captions"],
                                                               data["caption_image"])
    selected = SelectedBenchmark(benchmark, root, None, retrieval, card=dataset_card(benchmark, retrieval))
    args = Namespace(batch_size=4, text_batch_size=3, workers=0, device="cpu", precision="fp32", no_progress=True,
                     chunk_elements=10 ** 6, tie_rule="against", bucket_edges=[77, 154, 248], perturbations=[],
                     perturb_seed=0, bucket_by_column=None, column_edges=None)
    for context, name in names.items():
        model, preprocess, tokenizer = build_model(name)
        counts = [len(ids) for ids in _reference_ids(folder, tokenizer, data["captions"])]
        numbers = evaluate_retrieval(LoadedModel(ModelSpec(name, name, None), model, preprocess, tokenizer, context),
                                     selected, args)
        assert numbers["caption_length_tokenizer"] == f"HFTokenizer({folder})"
        assert numbers["captions_over_context"] == sum(count > context for count in counts)
        card = numbers["protocol_card"]
        cut = [count - context for count in counts if count > context]
        assert card["mean_tokens_cut"] == pytest.approx(sum(cut) / len(cut), abs=0.01)
        expected = [sum(low < count <= high for count in counts) for low, high in ((0, 77), (77, 154), (154, 248))]
        expected.append(sum(count > 248 for count in counts))
        assert [bucket["num_captions"] for bucket in numbers["recall_by_length"]] == expected
        assert expected[0] < len(counts) and 0 < numbers["captions_over_context"] < len(counts)


def test_padding_free_encoding_gives_the_padded_features(metaclip2):
    from training_ext.eval.features import encode_captions

    _, _, names, _, data = metaclip2
    model, _, tokenizer = build_model(names[248])  # RoPE, 'eos' pooling at the layout's own end id
    calls = []
    hook = model.text.register_forward_pre_hook(lambda module, inputs: calls.append(inputs[0].shape[-1]))
    features, _ = encode_captions(model, tokenizer, data["captions"][:1], batch_size=1, workers=0,
                                  show_progress=False)
    hook.remove()
    assert calls and calls[0] < 248  # a short caption runs at its own length, not padded to 248
    features, _ = encode_captions(model, tokenizer, data["captions"], batch_size=3, workers=0, show_progress=False)
    torch.testing.assert_close(features, naive_text_features(model, tokenizer, data["captions"]), atol=1e-5,
                               rtol=1e-5)


def test_cut_n_keeps_the_models_first_n_tokens(metaclip2):
    layout, folder, names, _, data = metaclip2
    _, _, tokenizer = build_model(names[77])
    template = LAYOUTS[layout][1].split()
    specials = len(template) - 1  # XLM-V: <s> and </s>; mT5: </s>
    reference = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    cut = perturb_captions(data["captions"], "cut-20", tokenizer=tokenizer)
    for caption, kept in zip(data["captions"], cut):
        words = [word for word, _ in reference.pre_tokenizer.pre_tokenize_str(tokenizer.clean_fn(caption))]
        if len(words) + specials <= 20:
            assert kept == caption
            continue
        assert kept == " ".join(words[:20 - specials])
        assert len(reference.encode(tokenizer.clean_fn(kept)).ids) == 20
