"""Recall@1 by caption length: the measurement a long-caption model is about.

A caption's length is counted with the evaluated model's own tokenizer, untruncated and including its special
tokens (CLIP's start and end tokens; XLM-V's ``<s>`` and ``</s>``; mT5's ``</s>``), so "<=77" means "fits a
77-token context of this model's tokenizer whole" and ">248" means "cut even at 248". Models that share a
tokenizer (every CLIP-vocabulary model) put every caption in the same bucket; models of different tokenizers
count the same caption differently, and each result names its tokenizer (``tokenizer_name``).
"""
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from open_clip import SimpleTokenizer

from open_clip_ext.tokens import caption_ids, token_layout

DEFAULT_BUCKET_EDGES = (77, 154, 248)


def tokenizer_name(tokenizer: Callable) -> str:
    """'SimpleTokenizer', or 'HFTokenizer(<transformers name or path>)': what counted a result's lengths."""
    inner = getattr(tokenizer, "tokenizer", None)
    where = getattr(inner, "name_or_path", None)
    return f"{type(tokenizer).__name__}({where})" if where else type(tokenizer).__name__


def token_counts(tokenizer: Callable, captions: Sequence[str]) -> List[int]:
    """Untruncated token count of each caption under ``tokenizer`` (an open_clip SimpleTokenizer or HFTokenizer),
    its special tokens included. Raises TypeError for a tokenizer whose special ids cannot be read."""
    return [len(ids) for ids in caption_ids(tokenizer, captions)]


def counts_in_one_pass(tokenizer: Callable) -> bool:
    """True when ``tokenizer`` is open_clip's SimpleTokenizer, unreduced and not overridden: its ids are the
    untruncated ids cut to its context, so one BPE pass gives both the model input and the length (tokenizing
    is the slow part on CPU)."""
    return (isinstance(tokenizer, SimpleTokenizer) and type(tokenizer).__call__ is SimpleTokenizer.__call__
            and tokenizer.reduction_fn is None)


def tokenize_and_count(tokenizer: Callable, captions: Sequence[str],
                       one_pass: Optional[bool] = None) -> Tuple[torch.Tensor, List[int]]:
    """((N, context) int64 model token ids, N untruncated token counts) for a batch of N captions.

    With ``counts_in_one_pass`` each caption is encoded once and cut to the context by the tokenizer's rule (keep
    the first context_length - 1 ids, the end id last, pad after); any other tokenizer runs as is and the
    counts take a pass of their own. Raises TypeError as ``token_counts`` does.
    """
    all_ids = caption_ids(tokenizer, captions)
    counts = [len(ids) for ids in all_ids]
    if not (counts_in_one_pass(tokenizer) if one_pass is None else one_pass):
        return tokenizer(list(captions)), counts
    layout, context_length = token_layout(tokenizer), tokenizer.context_length
    ids = torch.full((len(captions), context_length), layout.pad, dtype=torch.long)
    for row, tokens in enumerate(all_ids):
        if len(tokens) > context_length:
            tokens = tokens[:context_length - 1] + [layout.end]
        ids[row, :len(tokens)] = torch.tensor(tokens)
    return ids, counts


def bucket_labels(edges: Sequence[int] = DEFAULT_BUCKET_EDGES) -> List[str]:
    """(77, 154, 248) -> ['<=77', '78-154', '155-248', '>248']."""
    labels = [f"<={edges[0]}"]
    labels += [f"{low + 1}-{high}" for low, high in zip(edges[:-1], edges[1:])]
    return labels + [f">{edges[-1]}"]


def check_bucket_edges(edges: Sequence[int]) -> None:
    if not edges or any(b <= a for a, b in zip(edges[:-1], edges[1:])) or edges[0] < 1:
        raise ValueError(f"length bucket edges must be positive and strictly increasing, got {list(edges)}")


def _bucket_index(token_counts: torch.Tensor, edges: Sequence[int]) -> torch.Tensor:
    # bucketize with right=False: edges[i-1] < count <= edges[i] -> i
    return torch.bucketize(token_counts, torch.tensor(list(edges), dtype=token_counts.dtype))


def _percent_hits(ranks: torch.Tensor, k: int = 1) -> Optional[float]:
    return 100.0 * (ranks < k).double().mean().item() if ranks.numel() else None


def metrics_by_bucket(
        image_ranks: torch.Tensor,
        text_ranks: torch.Tensor,
        caption_bucket: torch.Tensor,
        image_bucket: torch.Tensor,
        labels: Sequence[str],
        ks: Sequence[int] = (1,),
) -> List[Dict]:
    """Recall@k per bucket: text->image over the captions in it, image->text over the images in it.

    caption_bucket[c] / image_bucket[i] index `labels`; recall of an empty bucket is None.
    """
    rows = []
    for index, label in enumerate(labels):
        in_caption_bucket, in_image_bucket = caption_bucket == index, image_bucket == index
        row = {"bucket": label, "num_captions": int(in_caption_bucket.sum())}
        row.update({f"text_to_image_R@{k}": _percent_hits(text_ranks[in_caption_bucket], k) for k in ks})
        row["num_images"] = int(in_image_bucket.sum())
        row.update({f"image_to_text_R@{k}": _percent_hits(image_ranks[in_image_bucket], k) for k in ks})
        rows.append(row)
    return rows


def recall_at_1_by_length(
        image_ranks: torch.Tensor,
        text_ranks: torch.Tensor,
        caption_image: torch.Tensor,
        token_counts: Sequence[int],
        edges: Sequence[int] = DEFAULT_BUCKET_EDGES,
) -> List[Dict]:
    """Per length bucket: text->image R@1 over the captions in it, image->text R@1 over the images
    whose caption is in it (an image with several captions is placed by its longest one).

    R@1 of an empty bucket is None.
    """
    counts = torch.as_tensor(list(token_counts), dtype=torch.long)
    caption_image = caption_image.cpu()
    image_counts = torch.zeros(image_ranks.shape[0], dtype=torch.long).scatter_reduce(
        0, caption_image, counts, reduce="amax")
    return metrics_by_bucket(image_ranks, text_ranks, _bucket_index(counts, edges),
                             _bucket_index(image_counts, edges), bucket_labels(edges))
