"""Checks that keep a webdataset stream from failing silently or spinning forever.

webdataset filters samples without a word and repeats passes over the shards until an epoch's batches are out;
shards whose samples all lack the expected members (``key.jpg`` + ``key.cls``, or ``key.input.jpg`` +
``key.outputs.txt``, instead of ``key.txt``) therefore made training sit at 0 batches forever. Here:
- ``ShardFieldCheck``: a shard none of whose samples has the members training needs stops the run, naming the shard,
  the members it found and the ones expected (a shard with only some such samples has them skipped and counted);
- ``StallWatchdog``: a stream that reads this many samples or shards without giving one batch stops.
"""
from typing import Iterable, Iterator, Optional, Sequence, Tuple

from training_ext.data.skips import UNDECODABLE_CAPTION, SkipLog, TextCheck, checked_caption


class EmptyDataError(RuntimeError):
    """A data source that yields nothing (every sample skipped, or no sample at all): an error, never a hang."""


class ShardFormatError(ValueError):
    """A shard none of whose samples has the members training reads; the message names the shard and members."""


def sample_fields(sample: dict) -> list:
    """The member extensions of a webdataset sample (``jpg``, ``txt``, ``short.txt``, ...), without the ``__x__``
    bookkeeping entries."""
    return sorted(key for key in sample if not key.startswith("__"))


def sample_captions(sample: dict, short_key: Optional[str],
                    text_check: Optional[TextCheck] = None) -> Tuple[str, Optional[str], Optional[str], str]:
    """(long caption, short caption or None, skip reason or None, detail) of a webdataset sample by the caption rule
    (skips.checked_caption, with ``text_check``: a caption that holds no text once tokenized is empty): training and
    the teacher-cache precompute read shards alike. An empty short caption (or one without text) comes back as ""
    and falls back to the long caption's first sentence later; one that is not UTF-8 skips the sample."""
    where = f"{sample.get('__url__')} sample {sample.get('__key__')}"
    caption, reason, detail = checked_caption(sample.get("txt"), f"{where} .txt", text_check)
    short = sample.get(short_key) if short_key else None
    if not reason and short is not None:
        short, short_reason, detail = checked_caption(short, f"{where} .{short_key}", text_check)
        reason = short_reason if short_reason == UNDECODABLE_CAPTION else None
    return caption, short, reason, detail


class ShardFieldCheck:
    """Pipeline stage over samples in shard order (straight after the tar reader). Raises ShardFormatError at the
    end of a shard in which no sample has the caption member and (for image data) an image member."""

    def __init__(self, caption_field: str = "txt", image_fields: Optional[Sequence[str]] = None):
        self.caption_field = caption_field
        self.image_fields = tuple(image_fields or ())

    def usable(self, fields: Iterable[str]) -> bool:
        fields = set(fields)
        return self.caption_field in fields and (not self.image_fields or bool(fields & set(self.image_fields)))

    def expected(self) -> str:
        wanted = f"'{self.caption_field}' (the long caption, member KEY.{self.caption_field})"
        if self.image_fields:
            wanted += f" and an image ({', '.join(self.image_fields)})"
        return wanted

    def finish_shard(self, url, samples: int, usable: int, fields: set) -> None:
        """Raises ShardFormatError when a shard with samples had no usable one."""
        if samples and not usable:
            raise ShardFormatError(
                f"{url}: none of its {samples} samples has {self.expected()}; members found: "
                f"{', '.join(sorted(fields)) or 'none'}. Pack captions as KEY.{self.caption_field} "
                f"(scripts/pack_webdataset.py does), or check --train-data / --val-data")

    def __call__(self, samples: Iterator[dict]) -> Iterator[dict]:
        url, count, usable, fields = None, 0, 0, set()
        for sample in samples:
            if sample.get("__url__") != url:
                self.finish_shard(url, count, usable, fields)
                url, count, usable, fields = sample.get("__url__"), 0, 0, set()
            members = sample_fields(sample)
            count += 1
            usable += self.usable(members)
            fields.update(members)
            yield sample
        self.finish_shard(url, count, usable, fields)


class StallWatchdog:
    """Pass-through stages that stop a stream which reads on without giving a batch (resampled shards never end a
    pass, so a stream whose every sample is skipped would otherwise run forever): ``shards`` after the shard list
    and ``samples`` after the tar reader count what is read, ``reset`` after batching zeroes both for every batch.
    Past ``sample_limit`` samples or ``shard_limit`` shards without a batch, EmptyDataError. Each DataLoader worker
    has its own copy, so it watches its own stream."""

    def __init__(self, where: str, sample_limit: int, shard_limit: int, skips: SkipLog):
        self.where, self.skips = where, skips
        self.limits = {"samples": sample_limit, "shards": shard_limit}
        self.read = {"samples": 0, "shards": 0}

    def _count(self, items: Iterator, kind: str) -> Iterator:
        for item in items:
            self.read[kind] += 1
            if self.read[kind] > self.limits[kind]:
                raise EmptyDataError(
                    f"{self.where}: {self.limits[kind]} {kind} read without a single batch"
                    + (f" (samples skipped: {self.skips.summary()})" if self.skips.get() else "")
                    + "; the data holds no usable sample")
            yield item

    def shards(self, items: Iterator) -> Iterator:
        return self._count(items, "shards")

    def samples(self, items: Iterator) -> Iterator:
        return self._count(items, "samples")

    def reset(self, batches: Iterator) -> Iterator:
        for batch in batches:
            self.read = {"samples": 0, "shards": 0}
            yield batch
