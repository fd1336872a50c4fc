"""Batched image and caption embedding with a DataLoader (decoding and tokenizing in workers).

Small batches (32) are the fastest on CPU (they stay in cache); on GPU the caller passes larger ones.

Features come back L2-normalised, float32, on the model's device, in input order.
"""
from typing import Callable, Iterable, List, Sequence, Tuple

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from open_clip_train.precision import get_autocast

from open_clip_ext.tokens import trim_padding, trims_padding_exactly
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


def text_encoder(model) -> Callable:
    """``model.encode_text``, fed each batch cut after its last pooled token where that leaves the features
    unchanged (``open_clip_ext.tokens.trims_padding_exactly``: the rule training follows too)."""
    if not trims_padding_exactly(model):
        return model.encode_text
    return lambda ids, normalize=False: model.encode_text(trim_padding(ids, model), normalize=normalize)


def encode_captions(model, tokenizer: Callable, captions: Sequence[str], batch_size: int = 32, workers: int = 2,
                    device="cpu", precision: str = "fp32",
                    show_progress: bool = True) -> Tuple[torch.Tensor, List[int]]:
    """(len(captions), embed_dim) normalised text features (the tokenizer truncates to its context),
    and every caption's untruncated token count under the model's tokenizer (see length_buckets), counted in the
    same pass."""
    token_counts: List[int] = []

    def token_ids():
        for ids, counts in _loader(list(captions), batch_size, workers, device, "captions", show_progress,
                                   TokenizeBatch(tokenizer)):
            token_counts.extend(counts)
            yield ids

    return _encode_batches(token_ids(), text_encoder(model), device, precision), token_counts
