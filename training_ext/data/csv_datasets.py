"""Map-style training datasets over an open_clip CSV, sized for ShareGPT4V (1.2M rows, 8 ranks x several workers).

The kept rows are one numpy index array, and no Python object per row is kept. When every record of the CSV is one
line (the usual case: a caption with a line break must be quoted across lines), the reader makes no string per
row (training_ext.common.csv_table.FieldRanges), the dataset holds each row's byte offset and reads the row from
the file when a sample is asked for: the text stays in the OS page cache, shared by
every rank and worker of the node. Otherwise the columns stay in the reader's Arrow buffers
(training_ext.common.csv_table with ``arrow=True``), which forked DataLoader workers share until written (a list of
a million ``str`` would be copied page by page as each worker touches the objects' reference counts,
pytorch#13246). Captions are cleaned, short captions derived and image paths resolved when a sample is read.

Checks made before training: a caption that is empty or white space only, or holds no text once tokenized by the
dataset's tokenizer, is skipped and counted (the rule of every source, training_ext.data.skips; only the captions
``TextCheck.suspect`` names are tokenized for it, found by Arrow without a Python object per row; of a file of
one-line records only the captions that do not start with an ASCII letter or digit, or whose record holds one of
the marks, are read for it); an image file that does not exist stops the run naming the row, or with
``skip_missing`` is skipped and counted. The image files are checked once per node, by its local rank 0 (each
folder the names use listed once), and the result is shared with the node's other ranks
(training_ext.data.node_shared).
"""
import collections
import contextlib
import csv
import dataclasses
import functools
import logging
import os
import sys
from collections.abc import Sequence
from typing import Callable, Optional

import numpy as np
from torch.utils.data import Dataset

from training_ext.common.captions import clean_caption, short_caption_for
from training_ext.common.csv_table import CsvTable, FieldRanges, image_base, read_csv_table, resolve_image_path
from training_ext.common.text_files import ENCODING
from training_ext.data.node_shared import once_per_node
from training_ext.data.skips import EMPTY_CAPTION, NO_IMAGE, SHOWN, SkipLog, TextCheck, decode_image

# the characters str.split() splits at: a caption made of them alone is empty once cleaned (clean_caption)
_PYTHON_WHITESPACE = "".join(c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace())
_BLANK = "^[" + "".join(f"\\x{{{ord(c):x}}}" for c in _PYTHON_WHITESPACE) + "]*$"


def blank_rows(column) -> np.ndarray:
    """(N,) bool: the rows of an Arrow string column that are empty or white space only, as Python's ``str.split``
    sees white space (so exactly the captions ``clean_caption`` makes empty)."""
    import pyarrow.compute as pc
    return pc.match_substring_regex(column, _BLANK).to_numpy(zero_copy_only=False)


class ArrowTexts(Sequence):
    """``convert(column[rows[i]])`` for i < len(rows): a read-only sequence of ``str`` over an Arrow string column
    and a numpy index array, so that nothing per row lives in Python objects until it is read."""

    def __init__(self, column, rows: np.ndarray, convert: Callable[[str], str] = str):
        self.column, self.rows, self.convert = column, rows, convert

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return self.convert(self.column[int(self.rows[index])].as_py())


class FileFields(Sequence):
    """``convert(field)`` of column ``column`` of data row ``rows[i]``, read from the CSV file when asked for, for a
    CSV whose records are one line each (``CsvTable.record_starts`` is set). The dataset then holds 8 bytes per row;
    the text stays in the OS page cache, shared by every rank and worker of the node (``os.pread``: nothing is
    mapped into the process, so reading a row does not grow a worker's private memory)."""

    def __init__(self, path: str, separator: str, starts: np.ndarray, column: int, rows: np.ndarray,
                 convert: Callable[[str], str] = str):
        self.path, self.separator, self.starts, self.column = path, separator, starts, column
        self.rows, self.convert = rows, convert
        self._fd = None

    def __getstate__(self):
        return {**self.__dict__, "_fd": None}  # a spawned worker opens the file itself

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        row = int(self.rows[index])
        start, end = int(self.starts[row]), int(self.starts[row + 1])
        line = os.pread(self._fd, end - start, start).decode(ENCODING).rstrip("\r\n")
        return self.convert(next(csv.reader([line], delimiter=self.separator))[self.column])


def _column(table: CsvTable, name: str, rows: np.ndarray, convert: Callable[[str], str] = str) -> Sequence:
    """Column ``name`` of ``rows``: read from the file per row when every record is one line, else from the Arrow
    buffers the reader filled."""
    if table.record_starts is not None:
        return FileFields(table.path, table.separator, table.record_starts, table.header.index(name), rows, convert)
    return ArrowTexts(table.columns[name], rows, convert)


def _release_arrow_memory() -> None:
    """Hand the reader's freed Arrow buffers back to the system (the pool keeps them otherwise), and the C heap's
    freed memory: glibc keeps what the reader's threads freed in their own arenas (some 150 MB for a 1.2M-row file)."""
    import ctypes
    import pyarrow as pa
    pa.default_memory_pool().release_unused()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _locator(table: CsvTable) -> Callable[[int], str]:
    """``table.where`` without the table's columns (the dataset keeps its own view of them)."""
    return dataclasses.replace(table, columns={}).where


# the ASCII letters and digits: a caption whose first character is one is neither blank nor without a letter
_ALNUM = np.zeros(256, dtype=bool)
_ALNUM[[ord(c) for c in "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"]] = True


def _caption_parts(column, text_check: Optional[TextCheck]):
    """(rows, values) pairs: the Arrow string values of every row whose caption could be blank or hold no text once
    tokenized. An Arrow column is one part, whole. Of a FieldRanges column (a file of one-line records) only the rows
    whose caption does not start with an ASCII letter or digit are read, and, when ``text_check`` tokenizes, those
    whose record holds one of its marks (a superset: a mark holds no quote, separator or line break)."""
    if not isinstance(column, FieldRanges):
        yield np.arange(len(column)), column
        return
    first = column.first_bytes()
    maybe = (first < 0) | ~_ALNUM[np.maximum(first, 0)]
    if text_check is not None and text_check.tokenizers:
        # a mark with a quote would be written doubled in a quoted field: then every caption is read
        maybe |= column.lines_matching(text_check.pattern) if '"' not in text_check.pattern else True
    rows = np.flatnonzero(maybe)
    if len(rows):
        yield rows, column.values(rows)


def captioned_rows(table: CsvTable, key: str, skips: SkipLog, text_check: Optional[TextCheck] = None) -> np.ndarray:
    """(K,) int64: the data rows whose caption in column ``key`` is not empty or blank and, with ``text_check``,
    holds text once tokenized; the others are skipped and counted (the first few named by file line). Only the
    rows ``text_check.suspect_rows`` names are read into Python and tokenized (and, of a file of one-line records,
    only the captions ``_caption_parts`` picks are read at all). Raises ValueError when none is left."""
    column = table.columns[key]
    empty = np.zeros(len(column), dtype=bool)
    details = {}
    for rows, values in _caption_parts(column, text_check):
        blank = np.asarray(blank_rows(values), dtype=bool)
        empty[rows[blank]] = True
        if text_check is not None:
            for index in np.flatnonzero(text_check.suspect_rows(values) & ~blank):
                detail = text_check.why_empty(clean_caption(values[int(index)].as_py()))
                if detail:
                    details[int(rows[index])] = detail
    empty[list(details)] = True
    for count, row in enumerate(np.flatnonzero(empty)):
        skips.skip(EMPTY_CAPTION, f"{table.where(row)} column {key!r}" if count < SHOWN else "",
                   details.get(int(row), ""))
    rows = np.flatnonzero(~empty)
    if not len(rows):
        raise ValueError(f"{table.path}: no row has a caption in column {key!r} ({len(table)} rows)")
    return rows


def text_table(path: str, caption_key: str, separator: str, image_key: Optional[str], keep: bool = False) -> CsvTable:
    """The table CsvTextDataset reads (``keep``: read it ahead, for a check before any model is built)."""
    # the image column is not read, but it tells a caption with a line break from rows an unclosed quote swallowed
    return read_csv_table(path, {"--csv-caption-key": caption_key}, separator, image_key=image_key, arrow=True,
                          keep=keep)


def image_table(path: str, image_key: str, caption_key: str, short_caption_key: Optional[str], separator: str,
                keep: bool = False) -> CsvTable:
    """The table CsvImageTextDataset reads (``keep``: read it ahead, as ``text_table``)."""
    return read_csv_table(path, {"--csv-img-key": image_key, "--csv-caption-key": caption_key,
                                 "--csv-short-caption-key": short_caption_key}, separator, arrow=True, keep=keep)


class CsvTextDataset(Dataset):
    """Long captions of a CSV only: the image column is never read, so stage 1 opens no image file.

    ``row_numbers[i]`` (int64) is the CSV data row of sample i (rows with an empty caption, or one with no text once
    tokenized, are left out), the row a teacher cache's ``row<N>`` key names; ``captions[i]`` its cleaned caption.
    ``text_check`` defaults to the check of ``tokenizer`` (``TextCheck.of``). Items: ``(long_ids,)``. Raises what
    ``read_csv_table`` raises, and ValueError when no row has a caption.
    """

    def __init__(self, path: str, caption_key: str, tokenizer: Callable, sep: str = "\t",
                 skips: Optional[SkipLog] = None, image_key: Optional[str] = "filepath",
                 text_check: Optional[TextCheck] = None):
        self.skips = skips or SkipLog()
        table = text_table(path, caption_key, sep, image_key)
        self.row_numbers = captioned_rows(table, caption_key, self.skips, text_check or TextCheck.of(tokenizer))
        self.captions = _column(table, caption_key, self.row_numbers, clean_caption)
        del table
        _release_arrow_memory()
        self.tokenize = tokenizer

    def __len__(self):
        return len(self.row_numbers)

    def __getitem__(self, index):
        return (self.tokenize([self.captions[index]])[0],)


def _take(column, rows: np.ndarray):
    """The values of ``rows`` of an Arrow string column or a FieldRanges column, as Arrow strings."""
    import pyarrow as pa
    return column.values(rows) if isinstance(column, FieldRanges) else column.take(pa.array(rows))


# a folder named by at least this many rows is listed once instead of stat-ing each of its files, unless it holds
# more than 4 entries per name plus this many (then stat-ing the names costs less than listing it)
_LISTED = 64
_LISTING_SLACK = 4096
_NO_FOLDER = "no folder"  # what _listed_files gives for a folder that does not exist


def _listed_files(folder: str, wanted: float):
    """The names of the files (symbolic links followed, as ``os.path.isfile`` follows them) in ``folder``;
    ``_NO_FOLDER`` when it does not exist; None when it cannot be listed, or holds so many more entries than the
    ``wanted`` names that stat-ing those is cheaper."""
    limit = 4 * wanted + _LISTING_SLACK
    try:
        with os.scandir(folder) as entries:
            names = []
            for count, entry in enumerate(entries):
                if count > limit:
                    return None
                if entry.is_file():
                    names.append(entry.name)
            return names
    except (FileNotFoundError, NotADirectoryError):
        return _NO_FOLDER
    except OSError:
        return None


def existing_files(column, rows: np.ndarray, base: str, chunk: int = 1 << 16, sample: int = 4096) -> np.ndarray:
    """(len(rows),) bool: whether the image file named in ``column`` (an Arrow string column, or a FieldRanges
    column) at each of ``rows`` exists, a relative name taken from ``base`` (as ``resolve_image_path`` takes it).

    The folders (as written: the text up to a name's last "/") that an even ``sample`` of the names shows to hold
    at least ``_LISTED`` of them are listed once each (``os.scandir``: ShareGPT4V's 1.2M names point into a few
    dozen folders), and every name is looked up among the listed files by Arrow; a name under a folder that does
    not exist is missing. Any other name (a rarer folder, a name starting with ``~``, a name a listing does not
    hold) is checked with one ``stat``, a ``chunk`` of names at a time, so a million rows never live as Python
    strings at once."""
    import pyarrow as pa
    import pyarrow.compute as pc
    names = _take(column, rows)
    if isinstance(names, pa.ChunkedArray):
        names = names.combine_chunks()
    present = np.zeros(len(rows), dtype=bool)
    settled = np.zeros(len(rows), dtype=bool)  # by a listing: found there, or under a folder that does not exist
    picked = names.take(pa.array(np.linspace(0, len(rows) - 1, min(len(rows), sample)).astype(np.int64)))
    folders = collections.Counter(name[:name.rfind("/") + 1] for name in picked.to_pylist() if name[:1] != "~")
    listed = []
    for folder, hits in folders.items():
        wanted = hits * len(rows) / len(picked)
        if wanted < _LISTED:
            continue
        listing = _listed_files(os.path.join(base, folder) if folder else base, wanted)
        if listing is _NO_FOLDER:
            if folder:  # ("" is every name's folder: an absolute name may still exist)
                settled |= np.asarray(pc.starts_with(names, folder), dtype=bool)
        elif listing is not None:
            listed.extend(folder + name for name in listing)
    if listed:
        found = np.asarray(pc.is_in(names, value_set=pa.array(listed, names.type)), dtype=bool)
        present |= found
        settled |= found
    settled &= ~np.asarray(pc.starts_with(names, "~"), dtype=bool)  # expanded by resolve_image_path
    for start in range(0, len(rows), chunk):
        stat = np.flatnonzero(~settled[start:start + chunk]) + start
        if len(stat):
            present[stat] = [os.path.isfile(resolve_image_path(name, base))
                             for name in names.take(pa.array(stat)).to_pylist()]
    return present


class CsvImageTextDataset(Dataset):
    """Image, long caption and short caption per CSV row (stage 2 training, stage 1 validation).

    Relative image paths start from ``image_root``, else from the CSV's folder (training_ext.common.csv_table).
    Every image file must exist before training starts (FileNotFoundError naming the row and path) unless
    ``skip_missing``; the files are checked once per node. An image that exists but cannot be decoded gives None
    from ``__getitem__`` (skipped and counted: the loader's collate drops it). ``row_numbers``, ``image_paths``,
    ``captions`` and ``short_captions`` are per sample. A row whose caption holds no text once tokenized is skipped
    like an empty one, and a short caption that holds none gives way to the long caption's first sentence
    (``text_check``, by default ``TextCheck.of(tokenizer)``). Items: ``(image, long_ids, short_ids)``. Raises what
    ``read_csv_table`` raises, and ValueError when no row is left.
    """

    def __init__(self, path: str, image_key: str, caption_key: str, tokenizer: Callable, transform: Callable,
                 short_caption_key: Optional[str] = None, sep: str = "\t", skip_missing: bool = False,
                 image_root: Optional[str] = None, skips: Optional[SkipLog] = None,
                 text_check: Optional[TextCheck] = None):
        self.path = path
        self.skips = skips or SkipLog()
        self.text_check = text_check or TextCheck.of(tokenizer)
        table = image_table(path, image_key, caption_key, short_caption_key, sep)
        self.where = _locator(table)
        base = image_base(path, image_root)
        rows = captioned_rows(table, caption_key, self.skips, self.text_check)
        images = table.columns[image_key]

        def resolve(value: str) -> str:
            return resolve_image_path(value, base)

        present = once_per_node(functools.partial(existing_files, images, rows, base), "image-files")
        logging.info(f"{path}: {int(present.sum())} of {len(rows)} image files exist (checked once per node)")
        self._report_missing(ArrowTexts(images, rows, resolve), rows, present, skip_missing)
        self.row_numbers = rows[present]
        self.image_paths = _column(table, image_key, self.row_numbers, resolve)
        self.captions = _column(table, caption_key, self.row_numbers, clean_caption)
        self._shorts = _column(table, short_caption_key, self.row_numbers) if short_caption_key else None
        del table, images
        _release_arrow_memory()
        self.tokenize = tokenizer
        self.transform = transform

    def _report_missing(self, paths: ArrowTexts, rows: np.ndarray, present: np.ndarray, skip_missing: bool):
        """A missing image file stops the run here (row and path named) unless skipping was asked for."""
        missing = np.flatnonzero(~present)
        if len(missing) and not skip_missing:
            first = missing[0]
            raise FileNotFoundError(
                f"{self.where(rows[first])}: image file not found: {paths[first]} ({len(missing)} of {len(rows)} "
                f"rows name a missing file; relative paths start from --csv-image-root, else from the CSV's "
                f"folder; pass --csv-skip-missing-images to drop such rows)")
        for count, index in enumerate(missing):
            self.skips.skip(NO_IMAGE, f"{self.where(rows[index])}: {paths[index]}" if count < SHOWN else "")
        if len(missing) == len(rows):
            raise ValueError(f"{self.path}: no row has an existing image file")

    def short_caption(self, index: int) -> str:
        return short_caption_for(self.captions[index], self._shorts[index] if self._shorts is not None else None,
                                 self.text_check.holds_text)

    def __len__(self):
        return len(self.row_numbers)

    def __getitem__(self, index):
        image_path = self.image_paths[index]
        pixels = decode_image(image_path, self.transform, self.skips,
                              f"{self.where(self.row_numbers[index])}: {image_path}")
        if pixels is None:
            return None
        return pixels, self.tokenize([self.captions[index]])[0], self.tokenize([self.short_caption(index)])[0]
