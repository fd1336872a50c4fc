"""Reading the project's text files (captions, CSVs, JSON, caption folders, benchmark files, cache headers).

Every text read goes through here so that a file that is not UTF-8 stops with its path, line and byte offset
(``TextDecodeError``) instead of a bare ``UnicodeDecodeError`` from deep inside pandas, json or a DataLoader
worker. A UTF-8 byte-order mark at the start of a file is dropped (spreadsheet programs write one, and it would
otherwise become part of the first column's name).
"""
import contextlib
import json
from typing import IO, Iterator, Tuple

ENCODING = "utf-8"
_BOM = b"\xef\xbb\xbf"


class TextDecodeError(ValueError):
    """A text file (or a text member of a shard) that is not valid UTF-8; the message names where and the byte."""


def decode_text(data: bytes, where: str, offset: int = 0, line: int = 0) -> str:
    """``data`` decoded as UTF-8.

    ``where`` names the source (a path, or ``shard key.txt``); ``offset`` is the byte offset of ``data`` in that
    source and ``line`` its first line number (1-based; 0 when not known), so the error points at the bad byte.
    Raises TextDecodeError.
    """
    try:
        return data.decode(ENCODING)
    except UnicodeDecodeError as error:
        bad_line = line + data.count(b"\n", 0, error.start) if line else data.count(b"\n", 0, error.start) + 1
        raise TextDecodeError(
            f"{where}: not valid UTF-8 at byte {offset + error.start} (line {bad_line}): {error.reason} "
            f"(byte 0x{data[error.start]:02x}); re-save the file as UTF-8") from None


def read_text(path: str) -> str:
    """The whole text of ``path``. Raises FileNotFoundError, TextDecodeError."""
    with open(path, "rb") as handle:
        data = handle.read()
    start = len(_BOM) if data.startswith(_BOM) else 0
    return decode_text(data[start:], str(path), offset=start)


def text_lines(path: str) -> Iterator[Tuple[int, str]]:
    """(line number from 1, line without its line ending) for every line of ``path``, read in a stream (a CSV of a
    million long captions is not held twice in memory). Raises FileNotFoundError, TextDecodeError (with the line
    and byte offset)."""
    offset = 0
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            start = len(_BOM) if number == 1 and raw.startswith(_BOM) else 0
            # a UTF-8 multi-byte character never contains the byte 0x0a, so splitting bytes at newlines is safe
            text = decode_text(raw[start:], str(path), offset=offset + start, line=number)
            offset += len(raw)
            yield number, text.rstrip("\r\n")


def read_json(path: str):
    """The JSON content of ``path``. Raises FileNotFoundError, TextDecodeError, and ValueError naming the file,
    line and column of a syntax error."""
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON at line {error.lineno} column {error.colno}: {error.msg}") from None


def _raise_decode_error(path: str) -> None:
    """Re-read ``path`` line by line so that a decoding failure found elsewhere is reported with its line and byte."""
    for _ in text_lines(path):
        pass


@contextlib.contextmanager
def text_stream(path: str) -> Iterator[IO[str]]:
    """``path`` opened for reading text as the ``csv`` module wants it (``newline=''``; a leading BOM dropped). A
    file that is not UTF-8 raises TextDecodeError with the line and byte, wherever the reader meets the bad byte."""
    try:
        with open(path, encoding=ENCODING, newline="") as stream:
            if stream.read(1) != "\ufeff":
                stream.seek(0)
            yield stream
    except UnicodeDecodeError:
        _raise_decode_error(path)
        raise


def read_arrow_csv(path: str, **options):
    """``pyarrow.csv.read_csv(path, **options)``, a pyarrow Table, with text columns checked as UTF-8 by pyarrow;
    a file that is not raises TextDecodeError with the line and byte (pyarrow's own message names neither)."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    try:
        return pa_csv.read_csv(path, **options)
    except pa.ArrowInvalid as error:
        if "utf8" in str(error).lower():
            _raise_decode_error(path)
        raise
