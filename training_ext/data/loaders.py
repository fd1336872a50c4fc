"""Training and validation data for the two stages: long captions, short captions, and (stage 2) images.

Batches are tuples: ``(long_ids,)`` for text-only data (stage 1 never opens an image), and
``(images, long_ids, short_ids)`` for image data. Built on open_clip_train.data's pieces (shard lists, shuffles,
size discovery, DataInfo); open_clip's own CSV / webdataset builders yield only ``(image, text)`` pairs and always
decode the image, which is what stage 1 must avoid.
"""
import io
import logging
import math
import multiprocessing
import os
from typing import Callable, Optional

import pandas as pd
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from open_clip_train.data import (
    DataInfo, ResampledShards2, SharedEpoch, detshuffle2, expand_urls, get_dataset_size, log_and_continue,
)

from training_ext.stages.cached_targets import CachedTextSample, CsvCachedTargets, FolderCachedTargets
from training_ext.common.captions import clean_caption, first_sentence
from training_ext.data.folder import FolderDataset

_WDS_SAMPLE_SHUFFLE = (5000, 1000)  # (bufsize, initial): open_clip_train's sample shuffle
_WDS_SHARD_SHUFFLE = (2000, 500)
_WDS_IMAGE_FIELDS = ("jpg", "png", "jpeg", "webp")


def short_caption_for(long_caption: str, given_short: Optional[str]) -> str:
    """A given (non-empty) short caption wins; otherwise the first sentence of the long caption."""
    if given_short is not None and not (isinstance(given_short, float) and math.isnan(given_short)):
        given_short = clean_caption(given_short)
        if given_short:
            return given_short
    return first_sentence(long_caption)


# ----------------------------------------------------------------------------------------------------- CSV

def _read_csv_columns(path: str, sep: str, keys: dict) -> pd.DataFrame:
    """Read the named columns of an open_clip-style CSV, failing with the file and column at fault."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CSV file not found: {path}")
    frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    for role, key in keys.items():
        if key is not None and key not in frame.columns:
            raise KeyError(
                f"{path}: no column {key!r} for the {role} (columns: {', '.join(map(str, frame.columns))}); "
                f"set it with --csv-{role.replace(' ', '-')}-key")
    return frame


def _checked_captions(frame: pd.DataFrame, key: str, path: str) -> list:
    captions = [clean_caption(text) for text in frame[key].tolist()]
    for row, text in enumerate(captions):
        if not text:
            raise ValueError(f"{path}: row {row} has an empty caption in column {key!r}")
    return captions


class CsvTextDataset(Dataset):
    """Long captions of a CSV only: the image column is never read, so stage 1 opens no image file."""

    def __init__(self, path: str, caption_key: str, tokenizer: Callable, sep: str = "\t"):
        frame = _read_csv_columns(path, sep, {"caption": caption_key})
        self.captions = _checked_captions(frame, caption_key, path)
        self.tokenize = tokenizer

    def __len__(self):
        return len(self.captions)

    def __getitem__(self, index):
        return (self.tokenize([self.captions[index]])[0],)


class CsvImageTextDataset(Dataset):
    """Image, long caption and short caption per CSV row (stage 2 training, stage 1 validation)."""

    def __init__(self, path: str, image_key: str, caption_key: str, tokenizer: Callable, transform: Callable,
                 short_caption_key: Optional[str] = None, sep: str = "\t", skip_missing: bool = False):
        frame = _read_csv_columns(
            path, sep, {"img": image_key, "caption": caption_key, "short caption": short_caption_key})
        self.path = path
        long_captions = _checked_captions(frame, caption_key, path)
        given_short = frame[short_caption_key].tolist() if short_caption_key else [None] * len(frame)
        rows = [
            (row, str(image), long, short_caption_for(long, short))
            for row, (image, long, short) in enumerate(zip(frame[image_key].tolist(), long_captions, given_short))
        ]
        self.rows = self._rows_with_images(rows, skip_missing)
        self.tokenize = tokenizer
        self.transform = transform

    def _rows_with_images(self, rows: list, skip_missing: bool) -> list:
        """A missing image file stops the run here (row and path named) unless skipping was asked for."""
        present = []
        for entry in rows:
            row, image_path = entry[0], entry[1]
            if os.path.isfile(image_path):
                present.append(entry)
            elif not skip_missing:
                raise FileNotFoundError(
                    f"{self.path}: row {row}: image file not found: {image_path} "
                    f"(pass --csv-skip-missing-images to drop such rows)")
        skipped = len(rows) - len(present)
        if skipped:
            logging.warning(f"{self.path}: skipped {skipped} of {len(rows)} rows whose image file is missing")
        if not present:
            raise ValueError(f"{self.path}: no row has an existing image file")
        return present

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        row, image_path, long, short = self.rows[index]
        try:
            with Image.open(image_path) as image:
                pixels = self.transform(image)
        except Exception as error:  # a corrupt file: name it rather than fail deep inside PIL
            raise RuntimeError(f"{self.path}: row {row}: cannot read image {image_path}: {error}") from error
        return pixels, self.tokenize([long])[0], self.tokenize([short])[0]


# ----------------------------------------------------------------------------------------------- synthetic

class SyntheticTextDataset(Dataset):
    """Distinct multi-sentence captions for smoke runs (open_clip's synthetic set repeats one caption)."""

    def __init__(self, size: int, tokenizer: Callable):
        self.size = size
        self.tokenize = tokenizer

    def __len__(self):
        return self.size

    @staticmethod
    def caption(index: int) -> str:
        return (f"A photo of object number {index}. It stands on a table next to {index % 7} cups, "
                f"under a lamp that is {'on' if index % 2 else 'off'}. The wall behind it is painted "
                f"in shade {index % 13} and a window shows a street with {index % 5} cars.")

    def __getitem__(self, index):
        return (self.tokenize([self.caption(index)])[0],)


class SyntheticImageTextDataset(SyntheticTextDataset):
    """Synthetic images (a per-index grey level) with long and short captions."""

    def __init__(self, size: int, tokenizer: Callable, transform: Callable, image_size):
        super().__init__(size, tokenizer)
        self.transform = transform
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)

    def __getitem__(self, index):
        long = self.caption(index)
        image = Image.new("RGB", self.image_size, color=(index * 37 % 256,) * 3)
        return self.transform(image), self.tokenize([long])[0], self.tokenize([first_sentence(long)])[0]


# ------------------------------------------------------------------------------------ map-style loaders

class ResumableDistributedSampler(DistributedSampler):
    """DistributedSampler (seeded, per-epoch permutation, also for one process) that can start mid-epoch.

    Using it on one process too makes the order depend only on (seed, epoch): a resumed run sees the batches
    the killed run had not reached, and N processes with batch B together see exactly the batches one
    process with batch N*B sees.
    """

    def __init__(self, dataset, num_replicas: int, rank: int, seed: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.start_index = 0

    def start_at(self, index: int) -> None:
        """Skip the first `index` samples of this rank's share of the next epoch (set before iterating)."""
        self.start_index = index

    def __iter__(self):
        return iter(list(super().__iter__())[self.start_index:])

    def __len__(self):
        return self.num_samples - self.start_index


def _map_style_data(dataset: Dataset, args, is_train: bool) -> DataInfo:
    sampler = ResumableDistributedSampler(dataset, args.world_size, args.rank, args.seed) if is_train else None
    loader = DataLoader(
        dataset, batch_size=args.batch_size, shuffle=False, sampler=sampler, num_workers=args.workers,
        pin_memory=str(args.device).startswith("cuda"), drop_last=is_train,
        persistent_workers=False,
    )
    per_rank = sampler.num_samples if is_train else len(dataset)
    loader.num_batches = per_rank // args.batch_size if is_train else math.ceil(per_rank / args.batch_size)
    loader.num_samples = loader.num_batches * args.batch_size * args.world_size if is_train else len(dataset)
    return DataInfo(dataloader=loader, sampler=sampler)


# ----------------------------------------------------------------------------------------------- webdataset

class SkipCounter:
    """Samples dropped by the webdataset pipeline, counted across dataloader worker processes."""

    def __init__(self):
        self.value = multiprocessing.Value("i", 0)

    def add(self, n: int = 1) -> None:
        with self.value.get_lock():
            self.value.value += n

    def get(self) -> int:
        return self.value.value


def _decode_text(sample: dict, key: str) -> Optional[str]:
    value = sample.get(key)
    if value is None:
        return None
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class _TextOnlySample:
    """Tokenise the long caption; image bytes are never decoded."""

    def __init__(self, tokenizer):
        self.tokenize = tokenizer

    def __call__(self, sample):
        return (self.tokenize([clean_caption(_decode_text(sample, "txt"))])[0],)


class _ImageTextSample:
    """Decode the image (None when it is missing or corrupt: dropped and counted) and both captions."""

    def __init__(self, tokenizer, transform, short_key: Optional[str], skipped: SkipCounter):
        self.tokenize = tokenizer
        self.transform = transform
        self.short_key = short_key
        self.skipped = skipped

    def __call__(self, sample):
        field = next((f for f in _WDS_IMAGE_FIELDS if f in sample), None)
        if field is None:
            self.skipped.add()
            return None
        try:
            with Image.open(io.BytesIO(sample[field])) as image:
                pixels = self.transform(image.convert("RGB"))
        except Exception as error:
            logging.warning(f"webdataset: skipping sample {sample.get('__key__')} of {sample.get('__url__')}: "
                            f"corrupt image ({error})")
            self.skipped.add()
            return None
        long = clean_caption(_decode_text(sample, "txt"))
        short = short_caption_for(long, _decode_text(sample, self.short_key) if self.short_key else None)
        return pixels, self.tokenize([long])[0], self.tokenize([short])[0]


def _has_caption(sample: dict) -> bool:
    return "txt" in sample


def _not_none(sample) -> bool:
    return sample is not None


def _wds_data(args, is_train: bool, to_sample: Callable, epoch: int) -> DataInfo:
    shards = args.train_data if is_train else args.val_data
    resampled = getattr(args, "dataset_resampled", False) and is_train
    shared_epoch = SharedEpoch(epoch=epoch)
    num_shards = None
    if is_train:
        num_samples = args.train_num_samples
        if num_samples is None:
            num_samples, num_shards = get_dataset_size(shards)
        if not num_samples:
            raise RuntimeError(f"{shards}: number of training samples unknown; pass --train-num-samples "
                               "(or put sizes.json / __len__ next to the shards)")
    else:
        num_samples = args.val_num_samples or 0

    if resampled:
        pipeline = [ResampledShards2(shards, weights=args.train_data_upsampling_factors, deterministic=True,
                                     epoch=shared_epoch)]
    else:
        pipeline = [wds.SimpleShardList(shards)]
    if is_train:
        if not resampled:
            pipeline += [detshuffle2(bufsize=_WDS_SHARD_SHUFFLE[0], initial=_WDS_SHARD_SHUFFLE[1], seed=args.seed,
                                     epoch=shared_epoch), wds.split_by_node, wds.split_by_worker]
        # webdataset's own reader: open_clip_train's tarfile_to_samples_nothrow breaks on the end-of-shard
        # marker webdataset >= 1.0 emits (KeyError 'fname' after the first shard)
        pipeline += [wds.tarfile_to_samples(handler=log_and_continue), wds.shuffle(*_WDS_SAMPLE_SHUFFLE)]
    else:
        pipeline += [wds.split_by_worker, wds.tarfile_to_samples(handler=log_and_continue)]
    pipeline += [wds.select(_has_caption), wds.map(to_sample), wds.select(_not_none),
                 wds.batched(args.batch_size, partial=not is_train)]
    dataset = wds.DataPipeline(*pipeline)

    if is_train:
        if not resampled:
            num_shards = num_shards or len(expand_urls(shards)[0])
            if num_shards < max(1, args.workers) * args.world_size:
                raise ValueError(f"{shards}: {num_shards} shards for {args.workers} workers x {args.world_size} "
                                 "processes; need at least one shard per worker")
        global_batch = args.batch_size * args.world_size
        workers = max(1, args.workers)
        batches_per_worker = math.ceil(math.ceil(num_samples / global_batch) / workers)
        num_batches = batches_per_worker * workers
        num_samples = num_batches * global_batch
        dataset = dataset.with_epoch(batches_per_worker)
    else:
        num_batches = math.ceil(num_samples / args.batch_size)
    loader = wds.WebLoader(dataset, batch_size=None, shuffle=False, num_workers=args.workers,
                           persistent_workers=args.workers > 0)
    loader.num_batches = num_batches
    loader.num_samples = num_samples
    return DataInfo(dataloader=loader, shared_epoch=shared_epoch)


# ------------------------------------------------------------------------------------------------- public

def dataset_type(args, path: Optional[str]) -> str:
    """open_clip's --dataset-type (plus 'folder'), with 'auto' resolved from the file extension."""
    if args.dataset_type != "auto":
        return args.dataset_type
    if path and os.path.isdir(path):
        return "folder"
    extension = str(path).rsplit(".", 1)[-1].lower()
    if extension in ("csv", "tsv"):
        return "csv"
    if extension == "tar":
        return "webdataset"
    raise ValueError(f"cannot tell the dataset type of {path!r} from its extension; pass --dataset-type")


def _folder_data(args, path: str, tokenizer, transform, is_train: bool, teacher_cache=None) -> DataInfo:
    """A folder dataset; validation always reads the first line, so its captions do not change."""
    dataset = FolderDataset(path, tokenizer, transform, args.folder_caption_line if is_train else "first",
                            args.folder_short_line, seed=args.seed)
    data = _map_style_data(FolderCachedTargets(dataset, teacher_cache) if teacher_cache else dataset, args,
                           is_train)
    data.shared_epoch = dataset.shared_epoch  # DataInfo.set_epoch redraws the caption lines
    return data


def get_text_data(args, tokenizer, epoch: int = 0, teacher_cache=None) -> DataInfo:
    """Stage-1 training data: long captions only, batches ``(long_ids,)``; with a teacher cache
    ``(long_ids, cached teacher embedding)``."""
    kind = dataset_type(args, args.train_data)
    if kind == "synthetic" and teacher_cache is None:
        return _map_style_data(SyntheticTextDataset(args.train_num_samples or 64, tokenizer), args, True)
    if kind == "csv":
        dataset = CsvTextDataset(args.train_data, args.csv_caption_key, tokenizer, sep=args.csv_separator)
        return _map_style_data(CsvCachedTargets(dataset, teacher_cache) if teacher_cache else dataset, args, True)
    if kind == "webdataset":
        to_sample = _TextOnlySample(tokenizer)
        return _wds_data(args, True, CachedTextSample(to_sample, teacher_cache) if teacher_cache else to_sample,
                         epoch)
    if kind == "folder":
        return _folder_data(args, args.train_data, tokenizer, None, True, teacher_cache)
    raise ValueError(f"unsupported --dataset-type {kind!r}" + (" with --teacher-cache" if teacher_cache else ""))


def get_image_text_data(args, tokenizer, transform, is_train: bool, epoch: int = 0,
                        image_size=None) -> DataInfo:
    """Image data, batches ``(images, long_ids, short_ids)``; ``.skipped`` counts dropped webdataset samples."""
    path = args.train_data if is_train else args.val_data
    kind = dataset_type(args, path)
    skipped = SkipCounter()
    if kind == "synthetic":
        size = (args.train_num_samples if is_train else args.val_num_samples) or 64
        data = _map_style_data(SyntheticImageTextDataset(size, tokenizer, transform, image_size), args, is_train)
    elif kind == "csv":
        dataset = CsvImageTextDataset(
            path, args.csv_img_key, args.csv_caption_key, tokenizer, transform,
            # validation ranks long captions only, so its CSV needs no short-caption column
            short_caption_key=args.csv_short_caption_key if is_train else None, sep=args.csv_separator,
            skip_missing=args.csv_skip_missing_images)
        data = _map_style_data(dataset, args, is_train)
    elif kind == "webdataset":
        data = _wds_data(args, is_train, _ImageTextSample(tokenizer, transform, args.wds_short_caption_key, skipped),
                         epoch)
    elif kind == "folder":
        data = _folder_data(args, path, tokenizer, transform, is_train)
    else:
        raise ValueError(f"unsupported --dataset-type {kind!r}")
    data.skipped = skipped
    return data


def start_epoch_at(data: DataInfo, epoch: int, batches_done: int) -> None:
    """Set the epoch (reshuffles) and, when resuming mid-epoch, skip the batches already trained on.

    Map-style data skips exactly those samples; a webdataset stream cannot be rewound, so the loop just runs
    the remaining number of batches of that epoch from a fresh stream.
    """
    data.set_epoch(epoch)
    if isinstance(data.sampler, ResumableDistributedSampler):
        data.sampler.start_at(batches_done * data.dataloader.batch_size)
