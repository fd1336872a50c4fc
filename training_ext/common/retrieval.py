"""Chunked retrieval ranks and recall@k for image/text benchmarks.

Every query (an image, a caption, or an image to classify) has one or more positives in a gallery.
Its rank is the number of negatives that score at least as high as its best positive; a hit at k
means rank < k.

Ties: the reported rank counts every negative with exactly the best positive's score against the model
(tie rule "against"), so a degenerate model that scores every pair alike gets R@1 = 0. The peers rank by a
sort (argsort, argmax, topk) whose order among equal scores is not portable: an unstable sort's order depends
on the tensor's length, the device and the torch version (torch 2.14 on CPU: argsort(descending=True) of a
48-element vector whose items 12 and 13 tie puts 13 first, stable=True puts 12 first). No single tie rule
reproduces them, so every query also gets its optimistic rank (negatives scoring strictly higher: ties broken
in the model's favour). Any order a sort may give among equal scores yields a rank between the two, so the
recall of any such sort lies in [R@k from the reported ranks, R@k from the optimistic ranks]; tie_report gives
that interval and how many queries fall inside it (optimistic rank < k <= reported rank). With real float
features exact ties hardly ever happen and the interval is a single point.

The similarity matrix is never built whole: query rows are processed in chunks whose size is set
by a budget of matrix elements, so the full Flickr30k set (31,783 images x 158,915 captions) needs
a few hundred MB at a time instead of 20 GB.
"""
from typing import Callable, Dict, Iterable, NamedTuple, Sequence, Tuple

import torch

DEFAULT_CHUNK_ELEMENTS = 64 * 1024 * 1024  # 256 MB of float32 scores per chunk (plus masks)

# the only rule; tie_report says how far ties could move each number
TIE_RULES = {"against": "ties count against the model (rank = negatives scoring >= the best positive)"}


class RankBounds(NamedTuple):
    """Per query: the reported rank (negatives scoring >= the best positive) and the optimistic rank
    (negatives scoring > it). They differ exactly where a negative ties with the best positive."""
    reported: torch.Tensor
    optimistic: torch.Tensor


def _check_features(name: str, features: torch.Tensor) -> None:
    if features.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (count, dim) tensor, got shape {tuple(features.shape)}")
    if not torch.isfinite(features).all():
        # NaN compares false against everything, which would give NaN features a perfect rank
        raise ValueError(f"{name} hold NaN or inf values; the model produced invalid embeddings")


def _rank_bounds_of_best_positive(
        queries: torch.Tensor,
        gallery: torch.Tensor,
        positive_mask: Callable[[torch.Tensor], torch.Tensor],
        chunk_elements: int,
) -> RankBounds:
    """Both ranks of each query's best-scoring positive among the gallery.

    positive_mask(query_indices) gives the (len(query_indices), len(gallery)) boolean mask of positives.
    """
    _check_features("query features", queries)
    _check_features("gallery features", gallery)
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"query dim {queries.shape[1]} != gallery dim {gallery.shape[1]}")
    queries = queries.float()
    gallery_t = gallery.float().t()
    rows_per_chunk = max(1, chunk_elements // max(1, gallery.shape[0]))
    reported = torch.empty(queries.shape[0], dtype=torch.long)
    optimistic = torch.empty(queries.shape[0], dtype=torch.long)
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
        negatives = ~positives
        reported[start:stop] = ((scores >= best_positive) & negatives).sum(dim=1).cpu()
        optimistic[start:stop] = ((scores > best_positive) & negatives).sum(dim=1).cpu()
    return RankBounds(reported, optimistic)


def image_to_text_rank_bounds(
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        caption_image: torch.Tensor,
        chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> RankBounds:
    """Per image: the ranks of its best-scoring own caption among all captions.

    caption_image[c] is the index of the image caption c describes. An image owning several captions
    (COCO, Flickr30k: 5) is a hit at k when any one of them is in the top k (the published rule).
    """
    owner = caption_image.to(image_features.device)
    if owner.shape != (text_features.shape[0],):
        raise ValueError(f"caption_image must hold one image index per caption ({text_features.shape[0]}), "
                         f"got shape {tuple(owner.shape)}")
    return _rank_bounds_of_best_positive(
        image_features, text_features,
        lambda image_indices: owner[None, :] == image_indices[:, None],
        chunk_elements)


def target_rank_bounds(
        query_features: torch.Tensor,
        gallery_features: torch.Tensor,
        target: torch.Tensor,
        chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> RankBounds:
    """Per query: the ranks of its single target gallery item (target[q] indexes the gallery).

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
    return _rank_bounds_of_best_positive(
        query_features, gallery_features,
        lambda query_indices: gallery_indices[None, :] == target[query_indices][:, None],
        chunk_elements)


def image_to_text_ranks(image_features: torch.Tensor, text_features: torch.Tensor, caption_image: torch.Tensor,
                        chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> torch.Tensor:
    """The reported ranks of image_to_text_rank_bounds (ties count against the model)."""
    return image_to_text_rank_bounds(image_features, text_features, caption_image, chunk_elements).reported


def target_ranks(query_features: torch.Tensor, gallery_features: torch.Tensor, target: torch.Tensor,
                 chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> torch.Tensor:
    """The reported ranks of target_rank_bounds (ties count against the model)."""
    return target_rank_bounds(query_features, gallery_features, target, chunk_elements).reported


def recall_at_k(ranks: torch.Tensor, ks: Iterable[int]) -> Dict[int, float]:
    """Percentage of queries whose rank is below k, for every k."""
    if ranks.numel() == 0:
        raise ValueError("no queries: recall is undefined")
    return {k: 100.0 * (ranks < k).double().mean().item() for k in ks}


def tie_report(bounds: RankBounds, ks: Iterable[int]) -> Dict:
    """How far exact ties can move each R@k: per k the reported R@k (ties against the model), the optimistic
    R@k (ties in its favour) and the queries whose hit at k depends on the order of tied scores
    (optimistic rank < k <= reported rank). Any sort the peers use gives an R@k inside [reported, optimistic]."""
    ks = list(ks)
    reported, optimistic = recall_at_k(bounds.reported, ks), recall_at_k(bounds.optimistic, ks)
    report = {"queries": int(bounds.reported.numel()),
              "queries_with_tied_negatives": int((bounds.optimistic < bounds.reported).sum())}
    for k in ks:
        decided = (bounds.optimistic < k) & (bounds.reported >= k)
        report[f"R@{k}"] = {"reported": reported[k], "optimistic": optimistic[k],
                            "decided_by_ties": int(decided.sum())}
    return report


def retrieval_rank_bounds(
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        caption_image: torch.Tensor,
        chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> Tuple[RankBounds, RankBounds]:
    """(image->text, text->image) rank bounds."""
    return (image_to_text_rank_bounds(image_features, text_features, caption_image, chunk_elements),
            target_rank_bounds(text_features, image_features, caption_image, chunk_elements))


def recall_metrics(image_ranks: torch.Tensor, text_ranks: torch.Tensor, ks: Sequence[int]) -> Dict[str, float]:
    """{'image_to_text_R@k': ..., 'text_to_image_R@k': ...} from the two directions' ranks."""
    metrics = {}
    for direction, ranks in (("image_to_text", image_ranks), ("text_to_image", text_ranks)):
        for k, value in recall_at_k(ranks, ks).items():
            metrics[f"{direction}_R@{k}"] = value
    return metrics


def retrieval_metrics(
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        caption_image: torch.Tensor,
        ks: Sequence[int] = (1, 5, 10),
        chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
):
    """Image->text and text->image recall@k plus the per-query (reported) ranks they come from.

    Returns (metrics, image_ranks, text_ranks); metrics keys look like 'image_to_text_R@1'.
    """
    image_bounds, text_bounds = retrieval_rank_bounds(image_features, text_features, caption_image, chunk_elements)
    return (recall_metrics(image_bounds.reported, text_bounds.reported, ks),
            image_bounds.reported, text_bounds.reported)
