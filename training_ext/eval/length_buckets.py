"""Recall@1 by caption length: the measurement a long-caption model is about.

Caption length is counted with open_clip's SimpleTokenizer, untruncated and including the start and
end tokens, so "<=77" means "fits a stock CLIP context whole" and ">248" means "cut even at 248".
The count is the same for every model compared, whatever its own tokenizer or context.
"""
from functools import lru_cache
from typing import Dict, List, Optional, Sequence, Tuple

import torch

DEFAULT_BUCKET_EDGES = (77, 154, 248)
SPECIAL_TOKENS = 2  # <start_of_text> and <end_of_text>


@lru_cache(maxsize=1)
def count_tokenizer():
    """The SimpleTokenizer every caption length is counted with (built once: loading its merges takes a moment)."""
    from open_clip import SimpleTokenizer
    return SimpleTokenizer()


def caption_token_count(caption: str) -> int:
    """Untruncated token count of one caption, start and end tokens included."""
    return len(count_tokenizer().encode(caption)) + SPECIAL_TOKENS


def tokenizes_like_counter(tokenizer) -> bool:
    """True when `tokenizer` is a SimpleTokenizer whose ids are the counting tokenizer's, cut to its context:
    then one BPE pass gives both the model input and the length (tokenizing is the slow part on CPU)."""
    from open_clip import SimpleTokenizer
    reference = count_tokenizer()
    return (isinstance(tokenizer, SimpleTokenizer) and tokenizer.reduction_fn is None
            and tokenizer.clean_fn is reference.clean_fn and tokenizer.encoder == reference.encoder)


def tokenize_and_count(tokenizer, captions: Sequence[str],
                       one_pass: Optional[bool] = None) -> Tuple[torch.Tensor, List[int]]:
    """(model token ids, untruncated token counts) for a batch of captions.

    With a tokenizer that tokenizes like the counter, each caption is encoded once and cut to the
    context by open_clip's rule (keep the first context_length tokens, the last of them becomes the
    end token); any other tokenizer runs as is and the counts take a pass of their own.
    """
    if not tokenizes_like_counter(tokenizer):
        return tokenizer(list(captions)), [caption_token_count(c) for c in captions]
    context_length = tokenizer.context_length
    ids = torch.zeros(len(captions), context_length, dtype=torch.long)
    counts = []
    for row, caption in enumerate(captions):
        tokens = [tokenizer.sot_token_id] + tokenizer.encode(caption) + [tokenizer.eot_token_id]
        counts.append(len(tokens))
        if len(tokens) > context_length:
            tokens = tokens[:context_length - 1] + [tokenizer.eot_token_id]
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
