"""Batched image and caption embedding with a DataLoader (decoding and tokenizing in workers).

Features come back L2-normalised, float32, on the model's device, in input order.
"""
from typing import Callable, List, Sequence

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from open_clip_train.precision import get_autocast


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
    """collate_fn that tokenizes a list of captions (a class, so DataLoader workers can pickle it)."""

    def __init__(self, tokenizer: Callable):
        self.tokenizer = tokenizer

    def __call__(self, captions: List[str]) -> torch.Tensor:
        return self.tokenizer(captions)


def _encode_batches(loader: DataLoader, encode: Callable, device: torch.device, precision: str,
                    desc: str, show_progress: bool) -> torch.Tensor:
    autocast = get_autocast(precision, device_type=torch.device(device).type)
    chunks = []
    with torch.inference_mode(), autocast():
        for batch in tqdm(loader, desc=desc, unit="batch", disable=not show_progress, leave=False):
            batch = batch.to(device, non_blocking=True)
            chunks.append(encode(batch, normalize=True).float())
    return torch.cat(chunks)


def _loader(dataset: Dataset, batch_size: int, workers: int, device, collate_fn=None) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                      collate_fn=collate_fn, pin_memory=torch.device(device).type == "cuda")


def encode_images(model, preprocess: Callable, paths: Sequence[str], batch_size: int = 64, workers: int = 2,
                  device="cpu", precision: str = "fp32", show_progress: bool = True) -> torch.Tensor:
    """(len(paths), embed_dim) normalised image features."""
    loader = _loader(ImageFiles(paths, preprocess), batch_size, workers, device)
    return _encode_batches(loader, model.encode_image, device, precision, "images", show_progress)


def encode_captions(model, tokenizer: Callable, captions: Sequence[str], batch_size: int = 256, workers: int = 2,
                    device="cpu", precision: str = "fp32", show_progress: bool = True) -> torch.Tensor:
    """(len(captions), embed_dim) normalised text features; the tokenizer truncates to its context."""
    loader = _loader(list(captions), batch_size, workers, device, TokenizeBatch(tokenizer))
    return _encode_batches(loader, model.encode_text, device, precision, "captions", show_progress)
