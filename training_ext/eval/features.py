"""Batched image and caption embedding with a DataLoader (decoding and tokenizing in workers).

Small batches (32) are the fastest on CPU (they stay in cache); on GPU the caller passes larger ones.

Features come back L2-normalised, float32, on the model's device, in input order. Captions of a RoPE/CoPE tower
are encoded padding-free: each distinct caption once, sorted by length, every batch cut to its longest caption
(``encode_captions``).
"""
from typing import Callable, Dict, Iterable, List, NamedTuple, Sequence, Tuple

import torch
from PIL import Image, UnidentifiedImageError
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from open_clip_train.precision import get_autocast

from open_clip_ext.tokens import pooled_positions, text_pooling, trims_padding_exactly
from training_ext.eval.length_buckets import counts_in_one_pass, tokenize_and_count


class ImageFiles(Dataset):
    """Decoded, preprocessed images from a list of paths."""

    def __init__(self, paths: Sequence[str], transform: Callable):
        self.paths, self.transform = list(paths), transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        path = self.paths[index]
        try:
            with Image.open(path) as image:
                return self.transform(image.convert("RGB"))
        except (OSError, UnidentifiedImageError) as e:
            raise ValueError(f"cannot read image {path}: {e}") from e


class TokenizeBatch:
    """collate_fn: (token ids, untruncated token counts) of a list of captions; a class, so DataLoader
    workers can pickle it."""

    def __init__(self, tokenizer: Callable):
        self.tokenizer = tokenizer
        self.one_pass = counts_in_one_pass(tokenizer)

    def __call__(self, captions: List[str]):
        return tokenize_and_count(self.tokenizer, captions, self.one_pass)


def _encode_batches(batches: Iterable[torch.Tensor], encode: Callable, device, precision: str) -> torch.Tensor:
    autocast = get_autocast(precision, device_type=torch.device(device).type)
    chunks = []
    with torch.inference_mode(), autocast():
        for batch in batches:
            batch = batch.to(device, non_blocking=True)
            chunks.append(encode(batch, normalize=True).float())
    return torch.cat(chunks)


def _loader(dataset: Dataset, batch_size: int, workers: int, device, desc: str, show_progress: bool,
            collate_fn=None):
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=collate_fn, pin_memory=torch.device(device).type == "cuda")
    return tqdm(loader, desc=desc, unit="batch", disable=not show_progress, leave=False)


def encode_images(model, preprocess: Callable, paths: Sequence[str], batch_size: int = 32, workers: int = 2,
                  device="cpu", precision: str = "fp32", show_progress: bool = True) -> torch.Tensor:
    """(len(paths), embed_dim) normalised image features."""
    batches = _loader(ImageFiles(paths, preprocess), batch_size, workers, device, "images", show_progress)
    return _encode_batches(batches, model.encode_image, device, precision)


class DistinctCaptions(NamedTuple):
    """Captions tokenized once, in input order, with the model input that matters kept once per distinct caption.

    ids[d]: distinct caption d's ids up to and including its pooled token (the model's own pooling rule and end
    id, ``open_clip_ext.tokens.pooled_positions``); index[c]: the d of caption c; token_counts[c]: caption c's
    untruncated token count (``tokenize_and_count``), in input order.
    """
    ids: List[torch.Tensor]
    index: torch.Tensor
    token_counts: List[int]


def distinct_captions(batches: Iterable[Tuple[torch.Tensor, List[int]]], model) -> DistinctCaptions:
    """Collects (token ids, token counts) batches in input order. Two captions are one distinct caption when their
    ids agree up to the pooled token: a causal tower's features read nothing after it (``trims_padding_exactly``),
    so they get one feature."""
    pool_type, eos_id = text_pooling(model)
    rows: List[torch.Tensor] = []
    index: List[int] = []
    counts: List[int] = []
    seen: Dict[bytes, int] = {}
    for ids, batch_counts in batches:
        counts.extend(batch_counts)
        for row, end in zip(ids, pooled_positions(ids, pool_type, eos_id).tolist()):
            kept = row[:end + 1]
            distinct = seen.setdefault(kept.numpy().tobytes(), len(rows))
            if distinct == len(rows):
                rows.append(kept.clone())  # a copy: a view would keep the whole padded batch alive
            index.append(distinct)
    return DistinctCaptions(rows, torch.tensor(index, dtype=torch.long), counts)


def length_sorted_batches(rows: Sequence[torch.Tensor], batch_size: int) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """(order, batches): ``rows`` sorted by length (stable), in batches of ``batch_size``, each as wide as its
    longest row. The columns after a row's own end are 0: after its pooled token, so a causal tower reads none of
    them, and 0 moves no row's pooled position (neither the first largest id nor the first ``eos_id``)."""
    order = torch.argsort(torch.tensor([len(row) for row in rows], dtype=torch.long), stable=True)
    batches = [pad_sequence([rows[i] for i in chunk.tolist()], batch_first=True, padding_value=0)
               for chunk in order.split(batch_size)]
    return order, batches


def encode_captions(model, tokenizer: Callable, captions: Sequence[str], batch_size: int = 32, workers: int = 2,
                    device="cpu", precision: str = "fp32", show_progress: bool = True,
                    padding_free: bool = True) -> Tuple[torch.Tensor, List[int]]:
    """(len(captions), embed_dim) normalised text features (the tokenizer truncates to its context), in input
    order, and every caption's untruncated token count under the model's tokenizer (see length_buckets), counted
    in the same pass as the ids.

    Padding-free, for a tower whose features trimming leaves unchanged (``open_clip_ext.tokens.
    trims_padding_exactly``: the rule the training stages follow too): every caption is tokenized first, each
    distinct one (``distinct_captions``) is encoded once, sorted by length in batches cut to their longest caption
    (``length_sorted_batches``), and its feature is copied to each of its occurrences. Identical captions so get
    bit-identical features (exact ties stay exact), and no batch runs longer than its longest caption.

    Any other tower, or ``padding_free=False`` (the reference the speed run compares with): the captions in input
    order, every batch at the full context, tokenizing in the DataLoader workers while the model encodes.
    """
    batches = _loader(list(captions), batch_size, workers, device, "captions", show_progress,
                      TokenizeBatch(tokenizer))
    if padding_free and trims_padding_exactly(model):
        distinct = distinct_captions(batches, model)
        order, sorted_batches = length_sorted_batches(distinct.ids, batch_size)
        encoded = _encode_batches(tqdm(sorted_batches, desc="distinct captions", unit="batch",
                                       disable=not show_progress, leave=False),
                                  model.encode_text, device, precision)
        features = torch.empty_like(encoded)
        features[order.to(encoded.device)] = encoded
        return features[distinct.index.to(encoded.device)], distinct.token_counts
    token_counts: List[int] = []

    def token_ids():
        for ids, counts in batches:
            token_counts.extend(counts)
            yield ids

    return _encode_batches(token_ids(), model.encode_text, device, precision), token_counts
