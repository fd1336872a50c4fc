"""Training and validation data for the two stages: long captions, short captions, and (stage 2) images.

Batches are tuples: ``(long_ids,)`` for text-only data (stage 1 never opens an image), and
``(images, long_ids, short_ids)`` for image data. Samples without a usable caption or image are skipped and counted
by one policy for every source (training_ext.data.skips); CSV datasets live in training_ext.data.csv_datasets. Built
on open_clip_train.data's pieces (shard lists, shuffles, size discovery, DataInfo); open_clip's own CSV / webdataset builders yield only ``(image, text)`` pairs and always
decode the image, which is what stage 1 must avoid.
"""
import io
import logging
import math
import multiprocessing
import os
from typing import Callable, Optional

import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset, default_collate
from torch.utils.data.distributed import DistributedSampler

from open_clip_train.data import (
    DataInfo, ResampledShards2, SharedEpoch, detshuffle2, get_dataset_size, log_and_continue,
)

from training_ext.stages.cached_targets import CachedTextSample, CsvCachedTargets, FolderCachedTargets
from training_ext.common.captions import first_sentence, short_caption_for
from training_ext.data.csv_datasets import CsvImageTextDataset, CsvTextDataset
from training_ext.data.folder import FolderDataset
from training_ext.data.shard_checks import (EmptyDataError, ShardFieldCheck, ShardReader, StallWatchdog,
                                            sample_captions, sample_fields, shard_listing)
from training_ext.data.skips import NO_IMAGE, SkipLog, TextCheck, decode_image
from training_ext.engine.preemption import ignore_stop_signals

_WDS_SAMPLE_SHUFFLE = (5000, 1000)  # (bufsize, initial): open_clip_train's sample shuffle
_WDS_SHARD_SHUFFLE = (2000, 500)
_WDS_IMAGE_FIELDS = ("jpg", "png", "jpeg", "webp")


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
    """The epoch's order is DistributedSampler's seeded permutation (also for one process), read from any global
    position: a resumed run continues at the first sample the killed run had not trained on, under any batch size,
    --accum-freq or number of processes.

    Global step j of an epoch trains the permutation's positions [j*G, (j+1)*G) (G = batch x accum x processes;
    process r takes every W-th of them from r), so the samples trained so far are always a prefix of the order, and
    N processes with batch B together see exactly the batches one process with batch N*B sees.

    ``epoch_samples`` (--train-num-samples; default: the dataset's length) is the length of each epoch's order: the
    first ``epoch_samples`` of successive seeded permutations of the dataset (fewer than its length: a part of it
    each epoch; more: whole passes and a part). The order's prefixes do not depend on it, so a resume under another
    --train-num-samples continues the same order.
    """

    def __init__(self, dataset, num_replicas: int, rank: int, seed: int, epoch_samples: Optional[int] = None):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.epoch_samples = epoch_samples or len(dataset)
        self.num_samples = self.epoch_samples // num_replicas  # DistributedSampler's count, over this epoch's order
        self.total_size = self.num_samples * num_replicas
        self.start_index = 0

    def start_at(self, position: int) -> None:
        """Start the next epoch at global position ``position`` of its order (set before iterating)."""
        self.start_index = position

    def __iter__(self):
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)  # DistributedSampler's order, so older runs resume alike
        passes = -(-self.epoch_samples // len(self.dataset))
        order = torch.cat([torch.randperm(len(self.dataset), generator=generator) for _ in range(passes)])
        remaining = order[:self.epoch_samples].tolist()[self.start_index:]
        usable = len(remaining) // self.num_replicas * self.num_replicas  # drop_last: every process the same count
        return iter(remaining[self.rank:usable:self.num_replicas])

    def __len__(self):
        return max(0, self.epoch_samples - self.start_index) // self.num_replicas


def collate_readable(batch: list):
    """default_collate of the samples that could be read (a dataset gives None for one whose image cannot be
    decoded, counted in its SkipLog); None when none could. The batch still stands for all its positions in the
    epoch's order, so a resume continues after them."""
    present = [sample for sample in batch if sample is not None]
    return default_collate(present) if present else None


class ReadableBatches(DataLoader):
    """A DataLoader with ``collate_readable``. Training sees a None for a batch of only unreadable samples (the loop
    counts its positions); validation never does."""

    def __init__(self, dataset, yield_empty: bool, **options):
        super().__init__(dataset, collate_fn=collate_readable, worker_init_fn=ignore_stop_signals, **options)
        self.yield_empty = yield_empty

    def __iter__(self):
        for batch in super().__iter__():
            if batch is not None or self.yield_empty:
                yield batch


def _map_style_data(dataset: Dataset, args, is_train: bool) -> DataInfo:
    if not is_train and args.val_num_samples:  # validation on the first N samples, the same ones every time
        dataset = Subset(dataset, range(min(args.val_num_samples, len(dataset))))
    sampler = ResumableDistributedSampler(dataset, args.world_size, args.rank, args.seed,
                                          epoch_samples=args.train_num_samples) if is_train else None
    loader = ReadableBatches(
        dataset, yield_empty=is_train, batch_size=args.batch_size, shuffle=False, sampler=sampler,
        num_workers=args.workers, pin_memory=str(args.device).startswith("cuda"), drop_last=is_train,
        persistent_workers=False,
    )
    per_rank = sampler.num_samples if is_train else len(dataset)
    loader.num_batches = per_rank // args.batch_size if is_train else math.ceil(per_rank / args.batch_size)
    loader.num_samples = loader.num_batches * args.batch_size * args.world_size if is_train else len(dataset)
    data = DataInfo(dataloader=loader, sampler=sampler)
    data.epoch_size = len(dataset)  # what a resume checks: the order is a permutation of this many samples
    return data


# ----------------------------------------------------------------------------------------------- webdataset

class _CaptionedSamples:
    """Pipeline stage between reading a shard and shuffling: decodes the long (``txt``) and short captions and
    skips (counting) a sample whose caption is missing, empty or blank, holds no text once tokenized
    (``text_check``), or is not UTF-8 (skips.checked_caption, the rule every source follows)."""

    def __init__(self, skips: SkipLog, short_key: Optional[str], text_check: TextCheck):
        self.skips = skips
        self.short_key = short_key
        self.text_check = text_check

    def __call__(self, samples):
        for sample in samples:
            caption, short, reason, detail = sample_captions(sample, self.short_key, self.text_check)
            if reason:
                self.skips.skip(reason, f"{sample.get('__url__')} sample {sample.get('__key__')}", detail)
                continue
            sample["txt"] = caption
            if self.short_key:
                sample[self.short_key] = short
            yield sample


class _TextOnlySample:
    """Tokenise the long caption; image bytes are never decoded."""

    def __init__(self, tokenizer):
        self.tokenize = tokenizer

    def __call__(self, sample):
        return (self.tokenize([sample["txt"]])[0],)


class _ImageTextSample:
    """Decode the image (None when it is missing or corrupt: dropped and counted) and both captions; the short
    caption is the given one or the first sentence, whichever holds text (``text_check``)."""

    def __init__(self, tokenizer, transform, short_key: Optional[str], skips: SkipLog, text_check: TextCheck):
        self.tokenize = tokenizer
        self.transform = transform
        self.short_key = short_key
        self.skips = skips
        self.text_check = text_check

    def __call__(self, sample):
        where = f"{sample.get('__url__')} sample {sample.get('__key__')}"
        field = next((f for f in _WDS_IMAGE_FIELDS if f in sample), None)
        if field is None:
            self.skips.skip(NO_IMAGE, where, f"fields: {', '.join(sample_fields(sample))}")
            return None
        pixels = decode_image(io.BytesIO(sample[field]), self.transform, self.skips, f"{where} .{field}")
        if pixels is None:
            return None
        long = sample["txt"]
        short = short_caption_for(long, sample.get(self.short_key) if self.short_key else None,
                                  self.text_check.holds_text)
        return pixels, self.tokenize([long])[0], self.tokenize([short])[0]


def _not_none(sample) -> bool:
    return sample is not None


class _GuardedPipeline(wds.DataPipeline):
    """A DataPipeline whose repeated passes (``with_epoch``) cannot spin forever: webdataset repeats a pass over
    the shards until the epoch's batches are out, so a pass that yields nothing (every sample skipped) would be
    repeated endlessly without a word. Such a pass raises EmptyDataError instead. The batches a worker gives from
    a second or later pass (samples it already gave this epoch) are counted in ``repeats``, shared with the
    training process (``_EpochLoader`` reports them)."""

    def __init__(self, *stages, where: str, skips: SkipLog):
        super().__init__(*stages)
        self.where, self.skips = where, skips
        self.repeats = multiprocessing.Value("q", 0)

    def iterator(self):
        for repetition in range(self.repetitions):
            produced = False
            for item in self.iterator1():
                produced = True
                if repetition:
                    with self.repeats.get_lock():
                        self.repeats.value += 1
                yield item
            if not produced and self.repetitions > 1:
                raise EmptyDataError(f"{self.where}: a whole pass over the shards gave no batch"
                                     + (f" (samples skipped: {self.skips.summary()})" if self.skips.get() else ""))


def _wds_data(args, is_train: bool, to_sample: Callable, epoch: int, skips: SkipLog,
              check: ShardFieldCheck, text_check: TextCheck) -> DataInfo:
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

    # one stat per local shard: a missing one stops here (the flag checks already did, keeping the listing); the
    # sizes are the data's fingerprint (training_ext.data.fingerprint)
    listing = shard_listing(shards).check("--train-data" if is_train else "--val-data")
    urls = listing.urls
    # Resampled shards never end a pass, so a stream that skips every sample is stopped by how much it reads
    # without a batch. Good data needs the shuffle's initial fill plus two reads per sample it gives until a batch
    # is out: the limit allows that with three in four samples skipped.
    sample_limit = 2 * (_WDS_SAMPLE_SHUFFLE[1] + 4 * args.batch_size)
    watchdog = StallWatchdog(shards, sample_limit, sample_limit + 2 * len(urls), skips)
    reader = ShardReader(skips, handler=log_and_continue)
    if resampled:
        pipeline = [ResampledShards2(shards, weights=args.train_data_upsampling_factors, deterministic=True,
                                     epoch=shared_epoch)]
    else:
        pipeline = [wds.SimpleShardList(shards)]
    if is_train:
        if not resampled:
            pipeline += [detshuffle2(bufsize=_WDS_SHARD_SHUFFLE[0], initial=_WDS_SHARD_SHUFFLE[1], seed=args.seed,
                                     epoch=shared_epoch), wds.split_by_node, wds.split_by_worker]
        # webdataset's own reader (ShardReader): open_clip_train's tarfile_to_samples_nothrow breaks on the
        # end-of-shard marker webdataset >= 1.0 emits (KeyError 'fname' after the first shard)
        pipeline += [watchdog.shards, reader, watchdog.samples, check,
                     _CaptionedSamples(skips, args.wds_short_caption_key, text_check),
                     wds.shuffle(*_WDS_SAMPLE_SHUFFLE)]
    else:
        pipeline += [wds.split_by_worker, reader, check,
                     _CaptionedSamples(skips, args.wds_short_caption_key, text_check)]
    pipeline += [wds.map(to_sample), wds.select(_not_none), wds.batched(args.batch_size, partial=not is_train),
                 watchdog.reset]
    dataset = _GuardedPipeline(*pipeline, where=shards, skips=skips)

    if is_train:
        if not resampled:
            num_shards = num_shards or len(urls)
            if num_shards < max(1, args.workers) * args.world_size:
                raise ValueError(f"{shards}: {num_shards} shards for {args.workers} workers x {args.world_size} "
                                 "processes; need at least one shard per worker")
        global_batch = args.batch_size * args.world_size
        workers = max(1, args.workers)
        batches_per_worker = math.ceil(math.ceil(num_samples / global_batch) / workers)
        num_batches = batches_per_worker * workers
        # one pass may give this many batches short of the epoch without a warning: whole batches per worker
        # (rounding the size up) and each worker's last, partial batch of the pass
        slack = num_batches * args.batch_size - num_samples // args.world_size + workers * args.batch_size
        num_samples = num_batches * global_batch
        dataset = dataset.with_epoch(batches_per_worker)
    else:
        num_batches = math.ceil(num_samples / args.batch_size)
    loader = _EpochLoader(dataset, batch_size=None, shuffle=False, num_workers=args.workers,
                          worker_init_fn=ignore_stop_signals,  # the main process alone stops on SIGTERM/SIGINT
                          persistent_workers=args.workers > 0)
    if is_train and not resampled:
        loader.watch_repeats(dataset.repeats, args.batch_size, slack, shared_epoch, skips)
    loader.num_batches = num_batches
    loader.num_samples = num_samples
    data = DataInfo(dataloader=loader, shared_epoch=shared_epoch)
    data.epoch_size = num_samples
    data.shard_listing = listing
    return data


class _EpochLoader(wds.WebLoader):
    """A WebLoader that, once an epoch's iteration ends (or is left), says how many of the batches this process
    trained came from a second pass over its shards (webdataset's ``with_epoch`` refills an epoch that one pass
    cannot fill by reading the shards again): a warning when more than rounding to whole batches per worker
    explains, which is the mark of shards that are missing, cut short, or smaller than their counts say."""

    repeats = None

    def watch_repeats(self, repeats, batch_size: int, slack: int, shared_epoch, skips: SkipLog) -> None:
        self.repeats, self.batch_size, self.slack, self.shared_epoch, self.skips = \
            repeats, batch_size, slack, shared_epoch, skips

    def __iter__(self):
        if self.repeats is None:
            yield from super().__iter__()
            return
        self.repeats.value = 0
        batches = 0
        try:
            for batch in super().__iter__():
                batches += 1
                yield batch
        finally:
            repeated = self.repeats.value * self.batch_size
            if repeated > self.slack:
                broken = self.skips.broken_shards()
                logging.warning(
                    f"epoch {self.shared_epoch.get_value()}: {repeated} of the {batches * self.batch_size} samples "
                    f"this process read were repeats: one pass over its shards gave fewer than the epoch's size "
                    f"(--train-num-samples or the shards' sizes.json / __len__), so webdataset read them again"
                    + (f"; {broken} shard reads broke off so far" if broken else
                       "; check that count against the shards"))


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


def _folder_data(args, path: str, tokenizer, transform, is_train: bool, skips: SkipLog, text_check: TextCheck,
                 teacher_cache=None) -> DataInfo:
    """A folder dataset; validation always reads the first line, so its captions do not change."""
    dataset = FolderDataset(path, tokenizer, transform, args.folder_caption_line if is_train else "first",
                            args.folder_short_line, seed=args.seed, text_check=text_check, skips=skips)
    data = _map_style_data(FolderCachedTargets(dataset, teacher_cache) if teacher_cache else dataset, args,
                           is_train)
    data.shared_epoch = dataset.shared_epoch  # DataInfo.set_epoch redraws the caption lines
    return data


def get_text_data(args, tokenizer, epoch: int = 0, teacher_cache=None,
                  text_check: Optional[TextCheck] = None) -> DataInfo:
    """Stage-1 training data: long captions only, batches ``(long_ids,)``; with a teacher cache
    ``(long_ids, cached teacher embedding)``. ``text_check`` (default ``TextCheck.of(tokenizer)``) finds the
    captions that hold no text once tokenized; with a cache it should also hold the cache's teacher tokenizer.
    ``.skipped`` (a SkipLog) counts the samples left out, ``.epoch_size`` is the number of samples an epoch's
    order is drawn from."""
    kind = dataset_type(args, args.train_data)
    skips = SkipLog()
    text_check = text_check or TextCheck.of(tokenizer)
    if kind == "synthetic" and teacher_cache is None:
        data = _map_style_data(SyntheticTextDataset(args.train_num_samples or 64, tokenizer), args, True)
    elif kind == "csv":
        dataset = CsvTextDataset(args.train_data, args.csv_caption_key, tokenizer, sep=args.csv_separator,
                                 skips=skips, image_key=args.csv_img_key, text_check=text_check)
        data = _map_style_data(CsvCachedTargets(dataset, teacher_cache) if teacher_cache else dataset, args, True)
    elif kind == "webdataset":
        to_sample = _TextOnlySample(tokenizer)
        data = _wds_data(args, True, CachedTextSample(to_sample, teacher_cache) if teacher_cache else to_sample,
                         epoch, skips, ShardFieldCheck(), text_check)
    elif kind == "folder":
        data = _folder_data(args, args.train_data, tokenizer, None, True, skips, text_check, teacher_cache)
    else:
        raise ValueError(f"unsupported --dataset-type {kind!r}" + (" with --teacher-cache" if teacher_cache else ""))
    data.skipped = skips
    return data


def get_image_text_data(args, tokenizer, transform, is_train: bool, epoch: int = 0,
                        image_size=None) -> DataInfo:
    """Image data, batches ``(images, long_ids, short_ids)``; ``.skipped`` (a SkipLog) counts the samples left
    out (empty captions, undecodable images, ...), ``.epoch_size`` as in get_text_data."""
    path = args.train_data if is_train else args.val_data
    kind = dataset_type(args, path)
    skips = SkipLog()
    text_check = TextCheck.of(tokenizer)
    if kind == "synthetic":
        size = (args.train_num_samples if is_train else args.val_num_samples) or 64
        data = _map_style_data(SyntheticImageTextDataset(size, tokenizer, transform, image_size), args, is_train)
    elif kind == "csv":
        dataset = CsvImageTextDataset(
            path, args.csv_img_key, args.csv_caption_key, tokenizer, transform,
            # validation ranks long captions only, so its CSV needs no short-caption column
            short_caption_key=args.csv_short_caption_key if is_train else None, sep=args.csv_separator,
            skip_missing=args.csv_skip_missing_images, image_root=getattr(args, "csv_image_root", None),
            skips=skips, text_check=text_check)
        data = _map_style_data(dataset, args, is_train)
    elif kind == "webdataset":
        to_sample = _ImageTextSample(tokenizer, transform, args.wds_short_caption_key, skips, text_check)
        data = _wds_data(args, is_train, to_sample, epoch, skips, ShardFieldCheck(image_fields=_WDS_IMAGE_FIELDS),
                         text_check)
    elif kind == "folder":
        data = _folder_data(args, path, tokenizer, transform, is_train, skips, text_check)
    else:
        raise ValueError(f"unsupported --dataset-type {kind!r}")
    data.skipped = skips
    return data


def start_epoch_at(data: DataInfo, epoch: int, samples_done: int, args) -> int:
    """Set the epoch (reshuffles) and start it after its first ``samples_done`` samples (all processes together);
    returns the batches this process gives for the rest of the epoch.

    Map-style data (CSV, folder, synthetic) continues exactly at the next unseen sample of the epoch's order, under
    any batch size, --accum-freq or number of processes. A webdataset stream cannot be rewound: it runs the
    remaining batches of the epoch from a fresh stream, which is why a resume refuses a changed batch layout for
    it (training_ext.engine.checkpoint.check_resume_position).
    """
    data.set_epoch(epoch)
    if isinstance(data.sampler, ResumableDistributedSampler):
        data.sampler.start_at(samples_done)
        return len(data.sampler) // args.batch_size
    return data.dataloader.num_batches - samples_done // (args.batch_size * args.world_size)
