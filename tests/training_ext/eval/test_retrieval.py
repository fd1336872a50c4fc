"""Chunked ranks and recall@k against a naive sort-based computation, ties and the 5-captions rule included."""
import open_clip
import pytest
import torch

from training_ext.eval.length_buckets import (bucket_labels, check_bucket_edges, counts_in_one_pass,
                                         recall_at_1_by_length, token_counts, tokenize_and_count)
from training_ext.common.retrieval import (image_to_text_rank_bounds, image_to_text_ranks, recall_at_k,
                                           retrieval_metrics, retrieval_rank_bounds, target_rank_bounds, target_ranks,
                                           tie_report)

from support.naive_retrieval import naive_metrics, naive_rank


def tied_features(count, dim, generator):
    """Small-integer features: their dot products are exact integers with many ties."""
    return torch.randint(-1, 2, (count, dim), generator=generator).float()


@pytest.mark.parametrize("chunk_elements", [1, 37, 10 ** 9])
def test_five_caption_rule_with_ties_matches_naive(chunk_elements):
    generator = torch.Generator().manual_seed(0)
    images, captions = tied_features(12, 3, generator), tied_features(60, 3, generator)
    caption_image = torch.arange(12).repeat_interleave(5)[torch.randperm(60, generator=generator)]
    expected, expected_image_ranks, expected_text_ranks = naive_metrics(images @ captions.t(), caption_image.tolist())
    metrics, image_ranks, text_ranks = retrieval_metrics(images, captions, caption_image,
                                                         chunk_elements=chunk_elements)
    assert image_ranks.tolist() == expected_image_ranks
    assert text_ranks.tolist() == expected_text_ranks
    assert metrics == pytest.approx(expected)
    # the optimistic ranks: ties broken in the model's favour
    _, optimistic_image, optimistic_text = naive_metrics(images @ captions.t(), caption_image.tolist(), optimistic=True)
    image_bounds, text_bounds = retrieval_rank_bounds(images, captions, caption_image, chunk_elements)
    assert image_bounds.optimistic.tolist() == optimistic_image and text_bounds.optimistic.tolist() == optimistic_text
    # with 3-dim {-1,0,1} features ties are everywhere: the test would not see a wrong tie rule otherwise
    assert len(set((images @ captions.t())[0].tolist())) < 10
    assert optimistic_text != expected_text_ranks


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


def test_constant_scores_tie_report_spans_zero_to_hundred():
    constant = torch.ones(4, 2)
    bounds = image_to_text_rank_bounds(constant, constant, torch.arange(4))
    assert (bounds.reported.tolist(), bounds.optimistic.tolist()) == ([3, 3, 3, 3], [0, 0, 0, 0])
    report = tie_report(bounds, (1, 4))
    assert report == {"queries": 4, "queries_with_tied_negatives": 4,
                      "R@1": {"reported": 0.0, "optimistic": 100.0, "decided_by_ties": 4},
                      "R@4": {"reported": 100.0, "optimistic": 100.0, "decided_by_ties": 0}}


# Hand-built ties with known ranks. Image 0 = [1, 0] owns captions 1, 3, 5; image 1 = [0, 1] owns 0, 2, 4.
# Image 0 scores the captions [4, 5, 5, 5, 0, 0]: its best positives (1, 3) tie with negative 2 at 5.
# Image 1 scores every caption 0. Captions 4 and 5 score both images 0.
HAND_IMAGES = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
HAND_CAPTIONS = torch.tensor([[4.0, 0.0], [5.0, 0.0], [5.0, 0.0], [5.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
HAND_OWNER = torch.tensor([1, 0, 1, 0, 1, 0])
HAND_RANKS = {  # (image->text, text->image)
    "reported": ([1, 3], [1, 0, 1, 0, 1, 1]),    # negatives at or above the best positive
    "optimistic": ([0, 0], [1, 0, 1, 0, 0, 0]),  # negatives strictly above it
}


def test_rank_bounds_on_a_hand_built_tie_case():
    image_bounds, text_bounds = retrieval_rank_bounds(HAND_IMAGES, HAND_CAPTIONS, HAND_OWNER, chunk_elements=3)
    for which in ("reported", "optimistic"):
        assert (getattr(image_bounds, which).tolist(), getattr(text_bounds, which).tolist()) == HAND_RANKS[which]
        _, naive_image, naive_text = naive_metrics(HAND_IMAGES @ HAND_CAPTIONS.t(), HAND_OWNER.tolist(),
                                                   optimistic=which == "optimistic")
        assert (naive_image, naive_text) == HAND_RANKS[which]
    # R@1: image->text 0% reported, 100% optimistic, both images decided by a tie; text->image 2/6 and 4/6
    image_report, text_report = tie_report(image_bounds, (1,)), tie_report(text_bounds, (1,))
    assert image_report["R@1"] == {"reported": 0.0, "optimistic": 100.0, "decided_by_ties": 2}
    assert text_report["R@1"] == pytest.approx({"reported": 200 / 6, "optimistic": 400 / 6, "decided_by_ties": 2})
    assert text_report["queries_with_tied_negatives"] == 2


# The peers' own R@k formulations (written here from their code, not copied), each on a (queries, gallery) score
# matrix whose positive for query q is target[q]:
def peer_argsort_descending(scores, target, k, stable=False):
    """TULIP@132c174 get_clip_metrics, GOAL@34f018e retrieval_goal.py, FLAIR@0f9ce05 compute_retrieval: the
    target's position in argsort(descending=True) (stable=False there; an unstable sort)."""
    order = torch.argsort(scores, dim=1, descending=True, stable=stable)
    return 100.0 * ((order == target[:, None]).nonzero()[:, 1] < k).double().mean().item()


def peer_argmax(scores, target):
    """Long-CLIP@3966af9 Urban1k.py argmax; LoTLIP@7aa4447 run_long_retrieval max(dim=-1): R@1 only."""
    return 100.0 * (scores.max(dim=-1).indices == target).double().mean().item()


def peer_ascending_tail(scores, target, k):
    """FG-CLIP@b08f665 dci_retrieval.py (R@1: argsort()[-1:]), Long-CLIP@3966af9 coco.py (argsort()[-k:]): the
    last k of an ascending sort."""
    return 100.0 * sum(int(target[q]) in row.argsort()[-k:].tolist() for q, row in enumerate(scores)) / len(scores)


def peer_topk(scores, target, k):
    """clip_benchmark zeroshot_retrieval.py recall_at_k, Long-CLIP@3966af9 flickr30k.py: torch.topk."""
    return 100.0 * sum(int(target[q]) in row.topk(k).indices.tolist() for q, row in enumerate(scores)) / len(scores)


def peer_recalls(scores, target, k):
    recalls = {"argsort descending": peer_argsort_descending(scores, target, k),
               "argsort descending, stable": peer_argsort_descending(scores, target, k, stable=True),
               "ascending argsort tail": peer_ascending_tail(scores, target, k),
               "topk": peer_topk(scores, target, k)}
    if k == 1:
        recalls["argmax"] = peer_argmax(scores, target)
    return recalls


def test_the_issue_example_ties_split_the_peers_and_the_report_brackets_them():
    """Two equal maxima at gallery items 12 and 13 of 48: the peers' sorts disagree on which comes first (with
    torch 2.14 on CPU, argsort(descending=True) puts 13 first, stable=True and argmax 12, the ascending tail 13)."""
    row = torch.linspace(0, 0.5, 48)
    row[12] = row[13] = 1.0
    scores, target = torch.stack([row, row]), torch.tensor([12, 13])
    recalls = peer_recalls(scores, target, 1)
    # each formulation finds one of the two queries; which one depends on the formulation and, for the unstable
    # sorts, on torch. Even documented orders disagree: argmax returns the first maximal index, while the tail of
    # a stable ascending sort is the last one
    assert set(recalls.values()) == {50.0}
    assert int(torch.argmax(row)) == 12 and int(torch.argsort(row, stable=True)[-1]) == 13
    bounds = target_rank_bounds(torch.eye(2), scores.t().contiguous(), target)  # the same scores: query q . item j
    assert bounds.reported.tolist() == [1, 1] and bounds.optimistic.tolist() == [0, 0]
    assert tie_report(bounds, (1,))["R@1"] == {"reported": 0.0, "optimistic": 100.0, "decided_by_ties": 2}


@pytest.mark.parametrize("k", [1, 5, 10])
def test_every_peer_formulation_lies_in_the_reported_interval(k):
    generator = torch.Generator().manual_seed(4)
    queries, gallery = tied_features(40, 3, generator), tied_features(30, 3, generator)
    target = torch.randint(0, 30, (40,), generator=generator)
    scores = queries @ gallery.t()
    report = tie_report(target_rank_bounds(queries, gallery, target, chunk_elements=50), (k,))[f"R@{k}"]
    # the interval, independently: a query is a hit under every order when the items scoring above its target
    # and those tying with it number fewer than k, and under some order when those above alone do
    above = (scores > scores.gather(1, target[:, None])).sum(dim=1)
    tied = (scores == scores.gather(1, target[:, None])).sum(dim=1) - 1
    assert report["reported"] == pytest.approx(100.0 * ((above + tied) < k).double().mean().item())
    assert report["optimistic"] == pytest.approx(100.0 * (above < k).double().mean().item())
    assert report["decided_by_ties"] == int(((above < k) & (above + tied >= k)).sum())
    assert report["decided_by_ties"] > 0  # ties matter in this case, so the interval is not a point
    for name, value in peer_recalls(scores, target, k).items():
        assert report["reported"] - 1e-9 <= value <= report["optimistic"] + 1e-9, name


def test_directions_are_not_swapped_against_lotlip_head():
    """LoTLIP@7aa4447 run_long_retrieval: t2i from (text @ image.T).max(dim=-1), i2t from its transpose. At the
    earlier pin b3a369c it took max(dim=0), which printed each direction under the other's name."""
    generator = torch.Generator().manual_seed(5)
    images = torch.nn.functional.normalize(torch.randn(48, 8, generator=generator), dim=-1)
    texts = torch.nn.functional.normalize(images + 1.1 * torch.randn(48, 8, generator=generator), dim=-1)
    metrics, _, _ = retrieval_metrics(images, texts, torch.arange(48), ks=(1,))
    t2i_similarity = texts @ images.t()
    truth = torch.arange(48)
    head_t2i = 100.0 * (t2i_similarity.max(dim=-1).indices == truth).double().mean().item()
    head_i2t = 100.0 * (t2i_similarity.t().max(dim=-1).indices == truth).double().mean().item()
    old_t2i = 100.0 * (t2i_similarity.max(dim=0).indices == truth).double().mean().item()
    assert head_t2i != head_i2t  # otherwise a swap could not show
    assert (metrics["text_to_image_R@1"], metrics["image_to_text_R@1"]) == pytest.approx((head_t2i, head_i2t))
    assert old_t2i == pytest.approx(head_i2t)  # b3a369c's "t2i" is image->text


def test_unknown_tie_rule_is_refused(capsys):
    from training_ext.eval.runner import parse_args
    with pytest.raises(SystemExit):
        parse_args(["--model", "tiny-clip", "--urban1k", "x", "--tie-rule", "peer"])
    assert "--tie-rule peer was removed" in capsys.readouterr().err


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


def _untruncated_counts(tokenizer, captions):
    """Counted from the tokenizer's own output at a context no caption reaches (CLIP pads with 0)."""
    return (tokenizer(captions, context_length=1000) != 0).sum(dim=1).tolist()


def test_token_counts_match_open_clip_tokenizer():
    tokenizer = open_clip.SimpleTokenizer()
    counts = token_counts(tokenizer, CAPTIONS_OF_EVERY_LENGTH)
    assert counts == _untruncated_counts(tokenizer, CAPTIONS_OF_EVERY_LENGTH)
    assert counts[1:4] == [76, 77, 78]  # around 77


@pytest.mark.parametrize("context_length", [77, 248])
@pytest.mark.parametrize("clean", ["lower", "canonicalize"])
def test_one_pass_tokenizing_equals_the_tokenizer(context_length, clean):
    tokenizer = open_clip.SimpleTokenizer(context_length=context_length, clean=clean)
    assert counts_in_one_pass(tokenizer)
    ids, counts = tokenize_and_count(tokenizer, CAPTIONS_OF_EVERY_LENGTH)
    assert torch.equal(ids, tokenizer(CAPTIONS_OF_EVERY_LENGTH))
    assert counts == _untruncated_counts(tokenizer, CAPTIONS_OF_EVERY_LENGTH)


class _Reversed(open_clip.SimpleTokenizer):
    """A tokenizer whose ids are not the untruncated ids cut to the context (so one pass cannot make them)."""

    def __call__(self, texts, context_length=None):
        return super().__call__(texts, context_length).flip(-1)


def test_other_tokenizers_run_as_they_are():
    tokenizer = _Reversed(context_length=77)
    assert not counts_in_one_pass(tokenizer)
    ids, counts = tokenize_and_count(tokenizer, CAPTIONS_OF_EVERY_LENGTH)
    assert torch.equal(ids, tokenizer(CAPTIONS_OF_EVERY_LENGTH))
    assert counts == _untruncated_counts(open_clip.SimpleTokenizer(), CAPTIONS_OF_EVERY_LENGTH)


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
