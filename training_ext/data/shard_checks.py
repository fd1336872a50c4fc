"""Checks that keep a webdataset stream from failing silently or spinning forever.

webdataset filters samples without a word and repeats passes over the shards until an epoch's batches are out;
shards whose samples all lack the expected members (``key.jpg`` + ``key.cls``, or ``key.input.jpg`` +
``key.outputs.txt``, instead of ``key.txt``) therefore made training sit at 0 batches forever. Here:
- ``ShardFieldCheck``: a shard none of whose samples has the members training needs stops the run, naming the shard,
  the members it found and the ones expected (a shard with only some such samples has them skipped and counted);
- ``StallWatchdog``: a stream that reads this many samples or shards without giving one batch stops;
- ``shard_listing``: a local shard the pattern names that does not exist stops the run before anything is built
  (remote shards, ``pipe:`` / ``http:`` ..., can only be found missing when read);
- ``ShardReader``: webdataset's tar reader, plus a check that each shard's tar stream reaches its end-of-archive
  marker. Python's tarfile (so webdataset) ends a stream that is cut short or holds a damaged header as if the
  archive ended there; such a shard is named and counted (SkipLog.broken_shard) with the samples it gave.
"""
import logging
import math
import os
import re
import tarfile
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from webdataset import tariterators

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


# ------------------------------------------------------------------------------------------- shard listing

class ShardsMissingError(ValueError):
    """Local shards named by the pattern do not exist; the message names them and how many of how many."""


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")  # two letters at least: a Windows drive is a local path
_NAMED = 5  # missing shards named in the error; the rest are counted


def local_path(url: str) -> Optional[str]:
    """The file a shard URL names (a plain path or ``file:``), None for a remote one (``pipe:``, ``http:``, ...)."""
    match = _SCHEME.match(url)
    if match is None:
        return url
    return url[len("file:"):] if match.group(1) == "file" else None


@dataclass
class ShardListing:
    """The shards a pattern names, from one stat of each local one: ``urls`` in the pattern's order, ``sizes``
    {url: bytes} of the local ones present, ``remote`` the URLs that cannot be checked before they are read."""
    pattern: str
    urls: List[str]
    sizes: Dict[str, int]
    missing: List[str]
    remote: List[str]
    told: bool = False  # the remote shards were mentioned in the log

    def check(self, flag: str = "--train-data") -> "ShardListing":
        """Raises ShardsMissingError when a local shard does not exist; logs once that remote ones are not checked."""
        if self.missing:
            named = ", ".join(self.missing[:_NAMED]) + (f" and {len(self.missing) - _NAMED} more"
                                                        if len(self.missing) > _NAMED else "")
            raise ShardsMissingError(
                f"{flag} {self.pattern}: {len(self.missing)} of {len(self.urls)} shards do not exist: {named}. "
                f"Fix the brace pattern or fetch the missing shards")
        if self.remote and not self.told:
            self.told = True
            logging.info(f"{self.pattern}: {len(self.remote)} of {len(self.urls)} shards are remote; a missing or "
                         f"cut-short one is found only when read (named and counted then)")
        return self


_listings: Dict[str, ShardListing] = {}  # kept from the flag checks for the dataset that reads them next


def shard_listing(pattern: str, keep: bool = False) -> ShardListing:
    """The shards of a webdataset pattern (brace expansion, ``::``-separated sources) with one ``os.stat`` per
    local shard. ``keep``: remember it for the next call with the same pattern (which takes it), so the flag
    checks and the dataset list the shards once between them."""
    from open_clip_train.data import expand_urls
    kept = _listings.pop(pattern, None)
    if kept is not None:
        return kept
    urls = expand_urls(pattern)[0]
    sizes, missing, remote = {}, [], []
    for url in urls:
        path = local_path(url)
        if path is None:
            remote.append(url)
            continue
        try:
            sizes[url] = os.stat(path).st_size
        except FileNotFoundError:
            missing.append(url)
    listing = ShardListing(pattern, urls, sizes, missing, remote)
    if keep:
        _listings[pattern] = listing
    return listing


# ------------------------------------------------------------------------------------------- tar endings

_COMPRESSED = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")  # gzip, bzip2, xz: tarfile's "r|*" reads them too


def tar_header(block: bytes, offset: int) -> Tuple[Optional[tarfile.TarInfo], Optional[str]]:
    """The 512 bytes where a tar header is due (at byte ``offset``), read by tarfile's own parser: (header, None)
    for a member's header, (None, None) for the end-of-archive marker (a zero block), (None, why) when the archive
    cannot go on there (cut short, damaged header)."""
    if len(block) < tarfile.BLOCKSIZE:
        return None, (f"cut short: it ends at byte {offset + len(block)}, where a tar header was due at byte "
                      f"{offset} (an interrupted download or copy?)")
    try:
        return tarfile.TarInfo.frombuf(block, tarfile.ENCODING, "surrogateescape"), None
    except tarfile.EOFHeaderError:
        return None, None
    except tarfile.HeaderError as error:
        return None, f"damaged: the tar header at byte {offset} cannot be read ({error})"


def tar_stop_problem(block: bytes, offset: int) -> Optional[str]:
    """Why a tar reader that stopped at byte ``offset`` (finding ``block`` there) stopped: None for the
    end-of-archive marker, else a sentence."""
    header, problem = tar_header(block, offset)
    if header is not None:
        return f"damaged: the tar reader stopped at byte {offset}, before the end-of-archive marker"
    return problem


class TarEndCheck:
    """A binary stream wrapper that follows the tar header chain through the bytes a tar reader reads (each header's
    size says where the next one starts; headers are parsed by tarfile's own TarInfo.frombuf), so that once the
    reader is done, ``problem()`` tells whether the archive really ended with its end-of-archive marker. Compressed
    archives are not followed (``problem()`` is None)."""

    def __init__(self, stream):
        self.stream = stream
        self.offset = 0          # bytes read so far
        self.next_header = 0     # where the next header block starts
        self.partial = b""       # the first bytes of that block, when a read ended inside it
        self.ending: Optional[str] = None  # "" once the end marker is seen, else what stopped the chain

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self._follow(data)
        return data

    def _follow(self, data: bytes) -> None:
        if self.offset == 0 and data.startswith(_COMPRESSED):
            self.ending = ""
        start = self.offset
        self.offset += len(data)
        while self.ending is None:
            begin = self.next_header + len(self.partial) - start
            if begin >= len(data):
                return
            self.partial += data[begin:begin + tarfile.BLOCKSIZE - len(self.partial)]
            if len(self.partial) < tarfile.BLOCKSIZE:
                return
            header, problem = tar_header(self.partial, self.next_header)
            self.partial = b""
            if header is None:
                self.ending = problem or ""
            else:
                self.next_header += tarfile.BLOCKSIZE * (1 + math.ceil(header.size / tarfile.BLOCKSIZE))

    def problem(self, chunk: int = 1 << 16) -> Optional[str]:
        """Call when the reader is done: reads on (only) until the chain resolves; None when the archive ended
        with its end-of-archive marker, else why it did not."""
        while self.ending is None:
            data = self.stream.read(chunk)
            if not data:
                if self.offset < self.next_header:
                    return (f"cut short: it ends at byte {self.offset}, inside a member whose data runs to byte "
                            f"{self.next_header} (an interrupted download or copy?)")
                return tar_header(self.partial, self.next_header)[1]
            self._follow(data)
        return self.ending or None


class ShardReader:
    """Pipeline stage from shard URLs (``{"url": ...}``) to samples: webdataset's url_opener, tar_file_expander and
    group_by_keys, one shard at a time, with ``TarEndCheck`` on each stream. A shard that cannot be opened or
    read, is cut short or holds a damaged header is counted in ``skips`` (``SkipLog.broken_shard``, which names
    the first few) with the samples it gave, and reading goes on with the next shard. ``handler``: webdataset's
    handler for errors inside a shard's samples (a duplicate member name, ...)."""

    def __init__(self, skips: SkipLog, handler: Callable[[Exception], bool]):
        self.skips, self.handler = skips, handler

    def __call__(self, sources: Iterable[dict]) -> Iterator[dict]:
        return tariterators.group_by_keys(self._members(sources), handler=self.handler)

    def _members(self, sources: Iterable[dict]) -> Iterator[dict]:
        for source in sources:
            errors: List[Exception] = []

            def note(error: Exception) -> bool:
                errors.append(error)
                return True

            keys, last_key = 0, None
            for opened in tariterators.url_opener([source], handler=note):
                check = opened["stream"] = TarEndCheck(opened["stream"])
                for member in tariterators.tar_file_expander([opened], handler=note):
                    key = tariterators.base_plus_ext(member["fname"])[0] if "fname" in member else None
                    if key is not None and key != last_key:
                        keys, last_key = keys + 1, key
                    yield member
                problem = check.problem()  # its own account first: tarfile's errors do not say where
                if problem:
                    errors.insert(0, problem)
                getattr(check.stream, "close", lambda: None)()
            if errors:
                self.skips.broken_shard(source["url"], keys, _describe(errors[0]))


def _describe(error) -> str:
    """A reader's error in a few words (webdataset appends the stream and URL to an exception's args)."""
    if isinstance(error, str):
        return error
    text = error.strerror if isinstance(error, OSError) and error.strerror else \
        str(error.args[0] if error.args else "").split(" @ ")[0]  # webdataset appends " @ <stream>"
    return f"cannot be read: {type(error).__name__}: {text}"
