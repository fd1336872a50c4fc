"""Recall@1 by caption length: the measurement a long-caption model is about.

Caption length is counted with open_clip's SimpleTokenizer, untruncated and including the start and
end tokens, so "<=77" means "fits a stock CLIP context whole" and ">248" means "cut even at 248".
The count is the same for every model compared, whatever its own tokenizer or context.
"""
from functools import lru_cache
from typing import Dict, List, Optional, Sequence

import torch
from tqdm import tqdm

DEFAULT_BUCKET_EDGES = (77, 154, 248)
SPECIAL_TOKENS = 2  # <start_of_text> and <end_of_text>


@lru_cache(maxsize=1)
def _simple_tokenizer():
    from open_clip import SimpleTokenizer
    return SimpleTokenizer()


def caption_token_counts(captions: Sequence[str], show_progress: bool = True) -> List[int]:
    """Untruncated token count of every caption, start and end tokens included."""
    tokenizer = _simple_tokenizer()
    return [len(tokenizer.encode(c)) + SPECIAL_TOKENS
            for c in tqdm(captions, desc="token counts", unit="caption", disable=not show_progress, leave=False)]


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


def _percent_hits(ranks: torch.Tensor) -> Optional[float]:
    return 100.0 * (ranks < 1).double().mean().item() if ranks.numel() else None


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
    caption_bucket, image_bucket = _bucket_index(counts, edges), _bucket_index(image_counts, edges)
    rows = []
    for index, label in enumerate(bucket_labels(edges)):
        in_caption_bucket, in_image_bucket = caption_bucket == index, image_bucket == index
        rows.append({
            "bucket": label,
            "num_captions": int(in_caption_bucket.sum()),
            "text_to_image_R@1": _percent_hits(text_ranks[in_caption_bucket]),
            "num_images": int(in_image_bucket.sum()),
            "image_to_text_R@1": _percent_hits(image_ranks[in_image_bucket]),
        })
    return rows
