"""Atomic file writes: a crash or Ctrl-C never leaves a half-written CSV, list or stats file behind.

Every writer goes to a temporary file in the destination's own folder (so the final os.replace is a
same-filesystem rename, which is atomic) and renames it over the destination only once it is complete.
"""
import contextlib
import csv
import itertools
import json
import os
import tempfile
from typing import IO, Iterable, Iterator, Sequence

from training_ext.common.text_files import read_json


def _default_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """Open a temporary sibling of `path` for writing; it replaces `path` only if the block succeeds."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        os.chmod(tmp_path, _default_file_mode())  # mkstemp makes 0600; outputs are ordinary shared files
        with os.fdopen(fd, mode, **open_kwargs) as handle:
            yield handle
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp_path)
        raise


def read_json_or(path: str, default):
    """The JSON content of `path`, or `default` when the file does not exist. Raises TextDecodeError or ValueError
    (naming the file) for a file that is not UTF-8 or not JSON."""
    if not os.path.exists(path):
        return default
    return read_json(path)


def write_json(path: str, obj) -> None:
    with atomic_open(path, "w", encoding="utf-8") as handle:
        json.dump(obj, handle, indent=1, sort_keys=True)
        handle.write("\n")


def write_lines(path: str, lines: Iterable[str]) -> None:
    """One item a line (lists of missing images, orphans, skipped samples)."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        for line in lines:
            handle.write(f"{line}\n")


def write_tsv(path: str, columns: Sequence[str], rows: Iterable[Sequence[str]],
              collapse_whitespace: bool = False, separator: str = "\t") -> int:
    """A tab-separated CSV as Python's ``csv.writer(delimiter='\\t')`` writes it (QUOTE_MINIMAL: a field holding a
    double quote, a tab or a line break is quoted and its quotes doubled; None is written as an empty field), so
    pandas, the ``csv`` module, open_clip_train and training_ext.common.csv_table read back the same values.

    Reports (lists of skipped or malformed entries, whose reasons quote error messages) pass
    ``collapse_whitespace=True``: runs of white space in a field become one space. ``separator`` replaces the tab
    for other delimited files. Raises ValueError for a row whose field count is not the header's. Returns the number
    of data rows written. The file is written atomically.
    """
    count = 0
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter=separator, lineterminator="\n")
        for number, row in enumerate(itertools.chain([columns], rows)):
            row = ["" if value is None else str(value) for value in row]
            if collapse_whitespace:
                row = [" ".join(value.split()) for value in row]
            if len(row) != len(columns):
                raise ValueError(f"{path}: row {count} has {len(row)} fields, expected {len(columns)}")
            writer.writerow(row)
            count += number > 0
    return count
