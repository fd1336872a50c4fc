"""Map-style training datasets over an open_clip CSV, sized for ShareGPT4V (1.2M rows, 8 ranks x several workers).

The kept rows are one numpy index array, and no Python object per row is kept. When every record of the CSV is one
line (the usual case: a caption with a line break must be quoted across lines), the dataset holds each row's byte
offset and reads the row from the file when a sample is asked for: the text stays in the OS page cache, shared by
every rank and worker of the node. Otherwise the columns stay in the reader's Arrow buffers
(training_ext.common.csv_table with ``arrow=True``), which forked DataLoader workers share until written (a list of
a million ``str`` would be copied page by page as each worker touches the objects' reference counts,
pytorch#13246). Captions are cleaned, short captions derived and image paths resolved when a sample is read.

Checks made before training: a caption that is empty or white space only, or holds no text once tokenized by the
dataset's tokenizer, is skipped and counted (the rule of every source, training_ext.data.skips; only the captions
``TextCheck.suspect`` names are tokenized for it, found by Arrow without a Python object per row); an image file
that does not exist stops the run naming the row, or with ``skip_missing`` is skipped and counted. The image files are checked once per node, by its local rank 0, and the
result is shared with the node's other ranks (training_ext.data.node_shared).
"""
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
from training_ext.common.csv_table import CsvTable, image_base, read_csv_table, resolve_image_path
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
    """Hand the reader's freed Arrow buffers back to the system (the pool keeps them otherwise)."""
    import pyarrow as pa
    pa.default_memory_pool().release_unused()


def _locator(table: CsvTable) -> Callable[[int], str]:
    """``table.where`` without the table's columns (the dataset keeps its own view of them)."""
    return dataclasses.replace(table, columns={}).where


def captioned_rows(table: CsvTable, key: str, skips: SkipLog, text_check: Optional[TextCheck] = None) -> np.ndarray:
    """(K,) int64: the data rows whose caption in column ``key`` is not empty or blank and, with ``text_check``,
    holds text once tokenized; the others are skipped and counted (the first few named by file line). Only the
    rows ``text_check.suspect_rows`` names are read into Python and tokenized. Raises ValueError when none is
    left."""
    column = table.columns[key]
    empty = np.array(blank_rows(column), dtype=bool)  # a writable copy: Arrow's may be read-only
    details = {}
    if text_check is not None:
        for row in np.flatnonzero(text_check.suspect_rows(column) & ~empty):
            detail = text_check.why_empty(clean_caption(column[int(row)].as_py()))
            if detail:
                details[int(row)] = detail
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


def existing_files(column, rows: np.ndarray, base: str, chunk: int = 1 << 16) -> np.ndarray:
    """(len(rows),) bool: whether the image file named in Arrow string ``column`` at each of ``rows`` exists, a
    relative name taken from ``base`` (as ``resolve_image_path`` takes it). One ``stat`` per row; the names are
    materialised a chunk at a time, so a million rows never live as Python strings at once."""
    import pyarrow as pa
    import pyarrow.compute as pc
    present = np.empty(len(rows), dtype=bool)
    prefix = os.path.join(base, "")
    for start in range(0, len(rows), chunk):
        names = column.take(pa.array(rows[start:start + chunk]))
        # os.path.join(base, name) for every name at once: an absolute name stands alone ("~" is expanded below)
        joined = pc.if_else(pc.starts_with(names, "/"), names, pc.binary_join_element_wise(
            pa.scalar(prefix, names.type), names, pa.scalar("", names.type)))
        present[start:start + chunk] = [
            os.path.isfile(resolve_image_path(name, base) if name[:1] == "~" else path)
            for path, name in zip(joined.to_pylist(), names.to_pylist())]
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
