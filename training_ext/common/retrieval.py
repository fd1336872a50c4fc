"""Chunked retrieval ranks and recall@k for image/text benchmarks.

Every query (an image, a caption, or an image to classify) has one or more positives in a gallery.
Its rank is the number of negatives that score at least as high as its best positive; a hit at k
means rank < k.

Tie rules (`tie_rule`, TIE_RULES):
- "against" (the default): ties count against the model. A negative with exactly the positive's score
  is ranked ahead of it, so a degenerate model that scores every pair alike gets R@1 = 0.
- "peer": the peers' sort order. The gallery is sorted by descending score with a stable sort, so among
  equal scores the lower gallery index comes first: the positive wins ties against negatives after it
  and loses them to negatives before it. This is torch.argsort(scores, descending=True, stable=True),
  and what torch.argmax / Tensor.max(dim) return for R@1 (first maximal index), as TULIP's
  get_clip_metrics, Long-CLIP's Urban1k.py and LoTLIP's run_long_retrieval compute it.
With real float features, exact ties hardly ever happen and both rules give the same numbers.

The similarity matrix is never built whole: query rows are processed in chunks whose size is set
by a budget of matrix elements, so the full Flickr30k set (31,783 images x 158,915 captions) needs
a few hundred MB at a time instead of 20 GB.
"""
from typing import Callable, Dict, Iterable, Sequence

import torch

DEFAULT_CHUNK_ELEMENTS = 64 * 1024 * 1024  # 256 MB of float32 scores per chunk (plus masks)

TIE_RULES = {
    "against": "ties count against the model (rank = negatives scoring >= the best positive)",
    "peer": "peers' sort order (stable descending sort: among equal scores the lower gallery index ranks "
            "first; rank = negatives scoring > the best positive + tied negatives at a lower index)",
}


def _check_features(name: str, features: torch.Tensor) -> None:
    if features.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (count, dim) tensor, got shape {tuple(features.shape)}")
    if not torch.isfinite(features).all():
        # NaN compares false against everything, which would give NaN features a perfect rank
        raise ValueError(f"{name} hold NaN or inf values; the model produced invalid embeddings")


def _check_tie_rule(tie_rule: str) -> None:
    if tie_rule not in TIE_RULES:
        raise ValueError(f"tie_rule must be one of {sorted(TIE_RULES)}, got {tie_rule!r}")


def _ranks_of_best_positive(
        queries: torch.Tensor,
        gallery: torch.Tensor,
        positive_mask: Callable[[torch.Tensor], torch.Tensor],
        chunk_elements: int,
        tie_rule: str = "against",
) -> torch.Tensor:
    """Rank of each query's best-scoring positive among the gallery, ties broken by `tie_rule`.

    positive_mask(query_indices) gives the (len(query_indices), len(gallery)) boolean mask of positives.
    """
    _check_tie_rule(tie_rule)
    _check_features("query features", queries)
    _check_features("gallery features", gallery)
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"query dim {queries.shape[1]} != gallery dim {gallery.shape[1]}")
    queries = queries.float()
    gallery_t = gallery.float().t()
    rows_per_chunk = max(1, chunk_elements // max(1, gallery.shape[0]))
    ranks = torch.empty(queries.shape[0], dtype=torch.long)
    for start in range(0, queries.shape[0], rows_per_chunk):
        stop = min(start + rows_per_chunk, queries.shape[0])
        indices = torch.arange(start, stop, device=queries.device)
        scores = queries[start:stop] @ gallery_t
        positives = positive_mask(indices)
        if not positives.any(dim=1).all():
            missing = indices[~positives.any(dim=1)][0].item()
            raise ValueError(f"query {missing} has no positive in the gallery")
        # the best positive score read from the same matrix as the negatives, so ties are exact
        best_positive = scores.masked_fill(~positives, float("-inf")).amax(dim=1, keepdim=True)
        if tie_rule == "against":
            ahead = scores >= best_positive
        else:  # the first best-scoring positive in index order; tied negatives before it rank ahead
            tied = scores == best_positive
            gallery_index = torch.arange(gallery.shape[0], device=scores.device)
            first_best = gallery_index.masked_fill(~(tied & positives), gallery.shape[0]).amin(dim=1, keepdim=True)
            ahead = (scores > best_positive) | (tied & (gallery_index[None, :] < first_best))
        ranks[start:stop] = (ahead & ~positives).sum(dim=1).cpu()
    return ranks


def image_to_text_ranks(
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        caption_image: torch.Tensor,
        chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
        tie_rule: str = "against",
) -> torch.Tensor:
    """Per image: the rank of its best-scoring own caption among all captions.

    caption_image[c] is the index of the image caption c describes. An image owning several captions
    (COCO, Flickr30k: 5) is a hit at k when any one of them is in the top k (the published rule).
    """
    owner = caption_image.to(image_features.device)
    if owner.shape != (text_features.shape[0],):
        raise ValueError(f"caption_image must hold one image index per caption ({text_features.shape[0]}), "
                         f"got shape {tuple(owner.shape)}")
    return _ranks_of_best_positive(
        image_features, text_features,
        lambda image_indices: owner[None, :] == image_indices[:, None],
        chunk_elements, tie_rule)


def target_ranks(
        query_features: torch.Tensor,
        gallery_features: torch.Tensor,
        target: torch.Tensor,
        chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
        tie_rule: str = "against",
) -> torch.Tensor:
    """Per query: the rank of its single target gallery item (target[q] indexes the gallery).

    Text->image retrieval (target = the caption's image) and zero-shot classification (query = image,
    gallery = class embeddings, target = label) are both this.
    """
    target = target.to(query_features.device)
    if target.shape != (query_features.shape[0],):
        raise ValueError(f"target must hold one gallery index per query ({query_features.shape[0]}), "
                         f"got shape {tuple(target.shape)}")
    if target.numel() and (target.min() < 0 or target.max() >= gallery_features.shape[0]):
        raise ValueError(f"target indices must lie in [0, {gallery_features.shape[0]})")
    gallery_indices = torch.arange(gallery_features.shape[0], device=query_features.device)
    return _ranks_of_best_positive(
        query_features, gallery_features,
        lambda query_indices: gallery_indices[None, :] == target[query_indices][:, None],
        chunk_elements, tie_rule)


def recall_at_k(ranks: torch.Tensor, ks: Iterable[int]) -> Dict[int, float]:
    """Percentage of queries whose rank is below k, for every k."""
    if ranks.numel() == 0:
        raise ValueError("no queries: recall is undefined")
    return {k: 100.0 * (ranks < k).double().mean().item() for k in ks}


def retrieval_metrics(
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        caption_image: torch.Tensor,
        ks: Sequence[int] = (1, 5, 10),
        chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
        tie_rule: str = "against",
):
    """Image->text and text->image recall@k plus the per-query ranks they come from.

    Returns (metrics, image_ranks, text_ranks); metrics keys look like 'image_to_text_R@1'.
    """
    image_ranks = image_to_text_ranks(image_features, text_features, caption_image, chunk_elements, tie_rule)
    text_ranks = target_ranks(text_features, image_features, caption_image, chunk_elements, tie_rule)
    metrics = {}
    for direction, ranks in (("image_to_text", image_ranks), ("text_to_image", text_ranks)):
        for k, value in recall_at_k(ranks, ks).items():
            metrics[f"{direction}_R@{k}"] = value
    return metrics, image_ranks, text_ranks
