"""Captions of a training set with a stable key per sample: what a teacher cache is indexed by.

The precompute command and stage 1 read the same data through these keys, so a cached embedding is found
again for the sample it was computed from:
- CSV: ``row<N>``, N the 0-based data row (the source id data preparation gives CSV rows too);
- webdataset: the sample's ``__key__`` (the member name up to the first dot of its file name);
- folder: ``<image path relative to the root, without extension>#<line>``, one record per caption line, so a
  run that draws a random line per epoch finds every line cached.
Each record also carries the cleaned long caption; its digest is stored in the cache and checked at training
time, which catches a cache built from another file, column or caption rule.
"""
import hashlib
import itertools
import logging
import multiprocessing
import os
import tarfile
from dataclasses import dataclass
from typing import Iterable, Iterator, List, Optional

from training_ext.common.captions import clean_caption, short_caption_for
from training_ext.common.csv_table import read_csv_table
from training_ext.common.folder_pairs import read_folder_captions
from training_ext.data.shard_checks import (ShardFieldCheck, TarEndCheck, sample_captions, shard_listing,
                                            tar_stop_problem)
from training_ext.data.skips import SHOWN, TextCheck, checked_caption


@dataclass(frozen=True)
class KeyedCaption:
    key: str
    caption: str        # the long caption, cleaned as training reads it
    short_caption: str  # the given short caption, or the long caption's first sentence


def caption_digest(caption: str) -> str:
    """A short fingerprint of a cleaned caption (stored per cache row, compared when training reads it)."""
    return hashlib.sha1(clean_caption(caption).encode("utf-8")).hexdigest()[:16]


def keyed_caption(key: str, caption: str, short_caption: Optional[str] = None,
                  text_check: Optional[TextCheck] = None) -> KeyedCaption:
    """The record of one sample; the short caption as training picks it (``short_caption_for`` with the
    tokenizer's empty-caption rule when ``text_check`` is given)."""
    caption = clean_caption(caption)
    return KeyedCaption(key, caption, short_caption_for(caption, short_caption,
                                                        text_check.holds_text if text_check else None))


def caption_field_for(dataset_type: str, csv_caption_key: str) -> str:
    """What a cache records as its caption field: the CSV column, webdataset's ``txt``, or a folder's ``line``."""
    return {"csv": csv_caption_key, "webdataset": "txt", "folder": "line"}[dataset_type]


def csv_row_key(row: int) -> str:
    """The key of a CSV's 0-based data row: a teacher cache's row key and data preparation's source id alike."""
    return f"row{row}"


def folder_line_key(root: str, image_path: str, line: int) -> str:
    relative = os.path.splitext(os.path.relpath(image_path, root))[0].replace(os.sep, "/")
    return f"{relative}#{line}"


# ------------------------------------------------------------------------------------------------- CSV

def _report_skipped(source: str, skipped: List[str]) -> None:
    """The samples left out by the caption rule training follows (so the cache holds what training reads)."""
    if skipped:
        logging.warning(f"{source}: {len(skipped)} samples without a usable caption skipped, as training skips "
                        f"them (e.g. {'; '.join(skipped[:SHOWN])})")


def csv_captions(path: str, caption_key: str = "title", short_caption_key: Optional[str] = None,
                 separator: str = "\t", image_key: Optional[str] = "filepath",
                 text_check: Optional[TextCheck] = None) -> List[KeyedCaption]:
    """Every data row of an open_clip CSV that training reads (only the caption columns are read; ``image_key``
    serves the reader's multi-line check, as in stage 1); a row with an empty caption, or with ``text_check`` one
    that holds no text once tokenized, is skipped, as training skips it. Raises what ``read_csv_table`` raises."""
    table = read_csv_table(path, {"--csv-caption-key": caption_key, "--csv-short-caption-key": short_caption_key},
                           separator, image_key=image_key)
    shorts = table.columns[short_caption_key] if short_caption_key else [None] * len(table)
    records, skipped = [], []
    for row, (text, short) in enumerate(zip(table.columns[caption_key], shorts)):
        caption, reason, detail = checked_caption(text, path, text_check)
        if reason:
            skipped.append(f"{table.where(row)}: {reason}" + (f" ({detail})" if detail else ""))
        else:
            records.append(keyed_caption(csv_row_key(row), caption, short, text_check))
    _report_skipped(path, skipped)
    return records


# ------------------------------------------------------------------------------------------ webdataset

def _split_member_name(name: str):
    """webdataset's rule: key = path up to the first dot of the file name, extension = the rest."""
    folder, _, filename = name.rpartition("/")
    stem, dot, extension = filename.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (extension if dot else "")


def _tar_samples(url: str, wanted: set, broken: List[str]) -> Iterator[dict]:
    """The samples of one shard as webdataset groups them (consecutive members of one key): {extension: bytes} for
    the wanted text members, None for the others (image bytes are skipped unread), plus ``__key__``/``__url__``.
    A shard whose tar stream breaks off (cut short, damaged header: tarfile ends it silently) gives the samples
    before the break and is named in ``broken``, as training reads it (shard_checks.ShardReader)."""
    stream = None
    if os.path.isfile(url):
        archive = tarfile.open(url, mode="r:*")  # seekable: skipped members are never read
    else:
        from webdataset import gopen
        stream = TarEndCheck(gopen(url, "rb"))
        archive = tarfile.open(fileobj=stream, mode="r|*")  # pipe: / http(s): streams
    sample, samples, problem = None, 0, None
    with archive:
        try:
            for member in archive:
                if not member.isfile():
                    continue
                key, extension = _split_member_name(member.name)
                if sample is None or key != sample["__key__"]:
                    if sample is not None:
                        yield sample
                    sample, samples = {"__key__": key, "__url__": url}, samples + 1
                sample[extension] = archive.extractfile(member).read() if extension in wanted else None
        except tarfile.ReadError as error:  # seekable: a member's data runs past the end of the file
            problem = f"cut short inside a member's data ({error}; an interrupted download or copy?)"
        else:
            if stream is not None:
                problem = stream.problem()
            else:  # the block where tarfile stopped must be the end-of-archive marker
                archive.fileobj.seek(archive.offset)
                problem = tar_stop_problem(archive.fileobj.read(tarfile.BLOCKSIZE), archive.offset)
    if sample is not None:
        yield sample
    if problem:
        broken.append(f"{url}: {problem}; it gave {samples} samples before the break")


def webdataset_captions(urls: str, short_caption_key: Optional[str] = None,
                        text_check: Optional[TextCheck] = None) -> Iterator[KeyedCaption]:
    """The samples of brace-expanded shards, in shard order, by training's rules: a sample without a usable
    caption (with ``text_check``: also one that holds no text once tokenized) is skipped (and counted), a shard
    none of whose samples has a ``txt`` member raises ShardFormatError, a local shard that does not exist
    ShardsMissingError (before any is read); a shard that breaks off is named in the log with the samples it gave."""
    wanted = {"txt"} | ({short_caption_key} if short_caption_key else set())
    skipped, broken = [], []
    shards = shard_listing(urls).check("--data").urls
    for sample in ShardFieldCheck()(s for url in shards for s in _tar_samples(url, wanted, broken)):
        caption, short, reason, detail = sample_captions(sample, short_caption_key, text_check)
        if reason:
            skipped.append(f"{sample['__url__']} sample {sample['__key__']}: {reason}"
                           + (f" ({detail})" if detail else ""))
        else:
            yield keyed_caption(sample["__key__"], caption, short, text_check)
    _report_skipped(urls, skipped)
    for problem in broken:
        logging.warning(f"shard {problem}; reading went on with the next shard, as training does")
    if broken:
        logging.warning(f"{urls}: {len(broken)} of {len(shards)} shards broke off (cut short or damaged); training "
                        f"reads them alike, so the cache holds the samples it will read")


# ---------------------------------------------------------------------------------------------- folder

def folder_captions(root: str, progress: bool = False, text_check: Optional[TextCheck] = None) -> List[KeyedCaption]:
    """One record per caption line of every image/caption-file pair under ``root`` that training reads: with
    ``text_check``, the lines that hold text once tokenized (a line keeps its number either way)."""
    found = read_folder_captions(root, progress=progress,
                                 holds_text=text_check.holds_text if text_check else None)
    found.report()
    return [keyed_caption(folder_line_key(found.root, image, line), captions[line], None, text_check)
            for image, _, captions, lines in found.items for line in lines]


# ------------------------------------------------------------------------------------------ tokenizing

def batches(records: Iterable[KeyedCaption], size: int) -> Iterator[List[KeyedCaption]]:
    records = iter(records)
    while True:
        batch = list(itertools.islice(records, size))
        if not batch:
            return
        yield batch


_tokenizer = None


def _start_tokenizer(model_name: str, cache_dir) -> None:
    global _tokenizer
    import open_clip
    import open_clip_ext  # noqa: F401  (a spawned worker registers the configs itself)
    _tokenizer = open_clip.get_tokenizer(model_name, cache_dir=cache_dir)


def _tokenize_batch(batch: List[KeyedCaption]):
    return batch, _tokenizer([r.caption for r in batch]), _tokenizer([r.short_caption for r in batch])


def tokenized_batches(records: Iterable[KeyedCaption], model_name: str, batch_size: int, workers: int = 0,
                      cache_dir=None) -> Iterator[tuple]:
    """(records, long ids, short ids) in data order, tokenized for ``model_name``; with ``workers`` > 0 by a
    process pool running ahead (tokenizing costs about 0.5 ms per long caption)."""
    if workers <= 0:
        _start_tokenizer(model_name, cache_dir)
        yield from map(_tokenize_batch, batches(records, batch_size))
        return
    with multiprocessing.Pool(workers, initializer=_start_tokenizer, initargs=(model_name, cache_dir)) as pool:
        yield from pool.imap(_tokenize_batch, batches(records, batch_size))
