"""Chunked ranks and recall@k against a naive sort-based computation, ties and the 5-captions rule included."""
import open_clip
import pytest
import torch

from training_ext.eval.length_buckets import (bucket_labels, caption_token_count, check_bucket_edges,
                                         recall_at_1_by_length, tokenize_and_count, tokenizes_like_counter)
from training_ext.common.retrieval import image_to_text_ranks, recall_at_k, retrieval_metrics, target_ranks

from support.naive_retrieval import naive_metrics, naive_rank


def tied_features(count, dim, generator):
    """Small-integer features: their dot products are exact integers with many ties."""
    return torch.randint(-1, 2, (count, dim), generator=generator).float()


@pytest.mark.parametrize("tie_rule", ["against", "peer"])
@pytest.mark.parametrize("chunk_elements", [1, 37, 10 ** 9])
def test_five_caption_rule_with_ties_matches_naive(chunk_elements, tie_rule):
    generator = torch.Generator().manual_seed(0)
    images, captions = tied_features(12, 3, generator), tied_features(60, 3, generator)
    caption_image = torch.arange(12).repeat_interleave(5)[torch.randperm(60, generator=generator)]
    expected, expected_image_ranks, expected_text_ranks = naive_metrics(images @ captions.t(), caption_image.tolist(),
                                                                        tie_rule=tie_rule)
    metrics, image_ranks, text_ranks = retrieval_metrics(images, captions, caption_image,
                                                         chunk_elements=chunk_elements, tie_rule=tie_rule)
    assert image_ranks.tolist() == expected_image_ranks
    assert text_ranks.tolist() == expected_text_ranks
    assert metrics == pytest.approx(expected)
    # with 3-dim {-1,0,1} features ties are everywhere: the test would not see a wrong tie rule otherwise
    assert len(set((images @ captions.t())[0].tolist())) < 10


def test_one_caption_per_image_random_features_match_naive():
    generator = torch.Generator().manual_seed(1)
    images = torch.nn.functional.normalize(torch.randn(30, 8, generator=generator), dim=-1)
    captions = torch.nn.functional.normalize(images + 0.8 * torch.randn(30, 8, generator=generator), dim=-1)
    caption_image = torch.arange(30)
    expected, _, _ = naive_metrics(images @ captions.t(), caption_image.tolist())
    metrics, _, _ = retrieval_metrics(images, captions, caption_image, chunk_elements=100)
    assert metrics == pytest.approx(expected)
    assert 0 < metrics["image_to_text_R@1"] < 100  # a non-trivial case


def test_ties_count_against_the_model():
    constant = torch.ones(4, 2)
    caption_image = torch.tensor([0, 1, 2, 3])
    # every score equal: each positive is ranked behind all 3 negatives
    assert image_to_text_ranks(constant, constant, caption_image).tolist() == [3, 3, 3, 3]
    metrics, _, _ = retrieval_metrics(constant, constant, caption_image, ks=(1, 4))
    assert metrics == {"image_to_text_R@1": 0.0, "image_to_text_R@4": 100.0,
                       "text_to_image_R@1": 0.0, "text_to_image_R@4": 100.0}


def test_constant_scores_under_the_peer_rule_rank_by_index():
    constant = torch.ones(4, 2)
    # all tied: under the sort-order rule item i has exactly the i items before it ahead
    assert image_to_text_ranks(constant, constant, torch.arange(4), tie_rule="peer").tolist() == [0, 1, 2, 3]
    metrics, _, _ = retrieval_metrics(constant, constant, torch.arange(4), ks=(1,), tie_rule="peer")
    assert metrics == {"image_to_text_R@1": 25.0, "text_to_image_R@1": 25.0}


# Hand-built ties with known ranks. Image 0 = [1, 0] owns captions 1, 3, 5; image 1 = [0, 1] owns 0, 2, 4.
# Image 0 scores the captions [4, 5, 5, 5, 0, 0]: its best positives (1, 3) tie with negative 2 at 5.
# Image 1 scores every caption 0. Captions 4 and 5 score both images 0.
HAND_IMAGES = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
HAND_CAPTIONS = torch.tensor([[4.0, 0.0], [5.0, 0.0], [5.0, 0.0], [5.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
HAND_OWNER = torch.tensor([1, 0, 1, 0, 1, 0])
HAND_RANKS = {  # (image->text, text->image)
    "against": ([1, 3], [1, 0, 1, 0, 1, 1]),  # negatives at or above the best positive
    "peer": ([0, 0], [1, 0, 1, 0, 1, 0]),     # positive 1 precedes negative 2; caption 5's image 0 is first
}


@pytest.mark.parametrize("tie_rule", ["against", "peer"])
def test_both_tie_rules_on_a_hand_built_tie_case(tie_rule):
    metrics, image_ranks, text_ranks = retrieval_metrics(HAND_IMAGES, HAND_CAPTIONS, HAND_OWNER, ks=(1, 2),
                                                         chunk_elements=3, tie_rule=tie_rule)
    assert (image_ranks.tolist(), text_ranks.tolist()) == HAND_RANKS[tie_rule]
    _, naive_image, naive_text = naive_metrics(HAND_IMAGES @ HAND_CAPTIONS.t(), HAND_OWNER.tolist(), tie_rule=tie_rule)
    assert (naive_image, naive_text) == HAND_RANKS[tie_rule]


def test_peer_rule_is_the_stable_descending_argsort():
    """The peers' computation (TULIP's get_clip_metrics / GOAL: position of the positive in
    argsort(descending=True), here with stable=True; any own caption for image->text)."""
    scores = HAND_IMAGES @ HAND_CAPTIONS.t()
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    first_positive = [min(order[i].tolist().index(c) for c in range(6) if HAND_OWNER[c] == i) for i in range(2)]
    order_t = torch.argsort(scores.t(), dim=1, descending=True, stable=True)
    positions = [order_t[c].tolist().index(int(HAND_OWNER[c])) for c in range(6)]
    assert (first_positive, positions) == HAND_RANKS["peer"]
    # Long-CLIP's Urban1k.py / LoTLIP's run_long_retrieval take R@1 as argmax / max(dim), the first maximal index
    assert [int(torch.argmax(scores.t()[c]) == HAND_OWNER[c]) for c in range(6)] == [
        int(rank == 0) for rank in HAND_RANKS["peer"][1]]


def test_unknown_tie_rule_is_refused():
    with pytest.raises(ValueError, match="tie_rule must be one of"):
        retrieval_metrics(HAND_IMAGES, HAND_CAPTIONS, HAND_OWNER, tie_rule="optimistic")


def test_any_own_caption_counts_for_image_to_text():
    # image 0 owns captions 0 and 1; caption 1 scores best overall, caption 0 worst
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    captions = torch.tensor([[-1.0, 0.0], [2.0, 0.0], [0.5, 1.0]])
    caption_image = torch.tensor([0, 0, 1])
    assert image_to_text_ranks(images, captions, caption_image).tolist() == [0, 0]


def test_identity_features_are_perfect():
    eye = torch.eye(5)
    metrics, _, _ = retrieval_metrics(eye, eye, torch.arange(5), ks=(1,))
    assert metrics == {"image_to_text_R@1": 100.0, "text_to_image_R@1": 100.0}


def test_target_ranks_for_classification_match_naive():
    generator = torch.Generator().manual_seed(2)
    images, classes = tied_features(20, 3, generator), tied_features(6, 3, generator)
    labels = torch.randint(0, 6, (20,), generator=generator)
    scores = (images @ classes.t()).tolist()
    expected = [naive_rank(scores[q], [j == labels[q] for j in range(6)]) for q in range(20)]
    assert target_ranks(images, classes, labels, chunk_elements=7).tolist() == expected
    assert recall_at_k(torch.tensor(expected), (1, 5)) == pytest.approx(
        {k: 100.0 * sum(r < k for r in expected) / 20 for k in (1, 5)})


def test_invalid_inputs_raise():
    features = torch.randn(3, 4)
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(features, torch.full((3, 4), float("nan")), torch.arange(3))
    with pytest.raises(ValueError, match="query 2 has no positive"):
        image_to_text_ranks(features, features, torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="one image index per caption"):
        image_to_text_ranks(features, features, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="target indices"):
        target_ranks(features, features, torch.tensor([0, 1, 3]))


def test_bucket_labels_and_edges():
    assert bucket_labels((77, 154, 248)) == ["<=77", "78-154", "155-248", ">248"]
    with pytest.raises(ValueError):
        check_bucket_edges([77, 77])


CAPTIONS_OF_EVERY_LENGTH = ["a dog.", "word " * 74, "word " * 75, "word " * 76, "a " * 100 + "cat", "word " * 300]


def test_token_counts_match_open_clip_tokenizer():
    untruncated = open_clip.tokenize(CAPTIONS_OF_EVERY_LENGTH, context_length=1000)
    assert [caption_token_count(c) for c in CAPTIONS_OF_EVERY_LENGTH] == (untruncated != 0).sum(dim=1).tolist()
    assert [caption_token_count(c) for c in CAPTIONS_OF_EVERY_LENGTH[1:4]] == [76, 77, 78]  # around 77


@pytest.mark.parametrize("context_length", [77, 248])
def test_one_pass_tokenizing_equals_the_tokenizer(context_length):
    tokenizer = open_clip.SimpleTokenizer(context_length=context_length)
    assert tokenizes_like_counter(tokenizer)
    ids, counts = tokenize_and_count(tokenizer, CAPTIONS_OF_EVERY_LENGTH)
    assert torch.equal(ids, tokenizer(CAPTIONS_OF_EVERY_LENGTH))
    assert counts == [caption_token_count(c) for c in CAPTIONS_OF_EVERY_LENGTH]


def test_other_tokenizers_run_as_they_are():
    tokenizer = open_clip.SimpleTokenizer(context_length=77, clean="canonicalize")
    assert not tokenizes_like_counter(tokenizer)
    ids, counts = tokenize_and_count(tokenizer, CAPTIONS_OF_EVERY_LENGTH)
    assert torch.equal(ids, tokenizer(CAPTIONS_OF_EVERY_LENGTH))
    assert counts == [caption_token_count(c) for c in CAPTIONS_OF_EVERY_LENGTH]


def test_recall_by_length_matches_naive_bucketing():
    generator = torch.Generator().manual_seed(3)
    image_ranks = torch.randint(0, 3, (6,), generator=generator)
    text_ranks = torch.randint(0, 3, (12,), generator=generator)
    caption_image = torch.arange(6).repeat_interleave(2)
    counts = [10, 77, 78, 154, 155, 248, 249, 500, 5, 90, 200, 300]
    rows = recall_at_1_by_length(image_ranks, text_ranks, caption_image, counts, (77, 154, 248))

    def bucket(n):
        return 0 if n <= 77 else 1 if n <= 154 else 2 if n <= 248 else 3

    for index, row in enumerate(rows):
        captions = [c for c in range(12) if bucket(counts[c]) == index]
        # an image is placed by its longest caption
        images = [i for i in range(6) if bucket(max(counts[2 * i], counts[2 * i + 1])) == index]
        assert row["num_captions"] == len(captions) and row["num_images"] == len(images)
        expected_t2i = 100.0 * sum(text_ranks[c] == 0 for c in captions) / len(captions) if captions else None
        expected_i2t = 100.0 * sum(image_ranks[i] == 0 for i in images) / len(images) if images else None
        assert row["text_to_image_R@1"] == pytest.approx(expected_t2i)
        assert row["image_to_text_R@1"] == pytest.approx(expected_i2t)
    assert rows[0]["num_captions"] == 3 and rows[1]["num_captions"] == 3  # 77 is in "<=77", 78 in "78-154"
