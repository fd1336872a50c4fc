"""Atomic file writes: a crash or Ctrl-C never leaves a half-written CSV, list or stats file behind.

Every writer goes to a temporary file in the destination's own folder (so the final os.replace is a
same-filesystem rename, which is atomic) and renames it over the destination only once it is complete.
"""
import contextlib
import csv
import json
import os
import tempfile
from typing import IO, Iterable, Iterator, Sequence


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
    """The JSON content of `path`, or `default` when the file does not exist."""
    if not os.path.exists(path):
        return default
    with open(path, encoding="utf-8") as handle:
        try:
            return json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from None


def write_json(path: str, obj) -> None:
    with atomic_open(path, "w", encoding="utf-8") as handle:
        json.dump(obj, handle, indent=1, sort_keys=True)
        handle.write("\n")


def write_lines(path: str, lines: Iterable[str]) -> None:
    """One item a line (lists of missing images, orphans, skipped samples)."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        for line in lines:
            handle.write(f"{line}\n")


def write_tsv(path: str, columns: Sequence[str], rows: Iterable[Sequence[str]]) -> int:
    """A tab-separated file in open_clip's CSV format (read back with pandas.read_csv(sep='\\t')).

    Fields holding a tab, newline or double quote are quoted the way pandas expects. Returns the
    number of data rows written.
    """
    count = 0
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            if len(row) != len(columns):
                raise ValueError(f"{path}: row {count} has {len(row)} fields, expected {len(columns)}")
            writer.writerow(row)
            count += 1
    return count
