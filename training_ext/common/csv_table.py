"""The one reader of open_clip caption CSVs: training (both stages and ``training_ext.main``), evaluation (``--csv``,
Long-DCI), teacher-cache precompute and data preparation all read a CSV through ``read_csv_table``.

Quoting: a file is read as Python's ``csv`` module and pandas write it (``csv.writer(delimiter='\\t')`` in TULIP's
``sharegpt_prepocessing.py``, ``DataFrame.to_csv(sep='\\t')`` in its ``dci_long_part.py``) and as open_clip_train's
``CsvDataset`` (pandas ``read_csv``) reads it back: a field that starts with a double quote is a quoted field, which
may hold the separator, line breaks and doubled quotes (``""`` is one quote); any other field is taken verbatim,
quotes included. A UTF-8 byte-order mark and CRLF line endings are accepted; empty lines are skipped; the first
record is the header. Values stay text: ``NA``, ``null`` or ``1`` are captions, not missing values or numbers. The
parser is pyarrow's CSV reader (Arrow's C++ parser: the same quoting rules, no Python object per row); the training
datasets' usual file, every record one line, is checked and located by numpy passes over its bytes instead
(``_one_line_columns``: the same rules, no string per row), and any other file goes to pyarrow.

Checks added to the standard rules (each error names the file, the line where the bad record starts and the fix):

- every record has the header's number of fields;
- a field that starts with a double quote must be a whole quoted field: its closing quote is followed by the
  separator or the end of the line. ``"Stop" he said`` breaks this rule: pandas and the ``csv`` module would
  silently read it as ``Stop he said``. Such fields come from writers that do not quote, among them this project's
  ``write_tsv`` from commit 1fecb9f until this rule was introduced, which wrote captions verbatim; the error names
  ``python scripts/requote_csv.py`` to rewrite such a file in standard form;
- a quoted field that spans lines (a caption holding a line break, as DCI's ``extra_caption`` may) is accepted and
  counted in the log, unless one of its continuation lines looks like a record of this file: split at the
  separator, its field in the image column's place looks like an image path of this file (a file name ending in
  one of the extensions the image column uses). That is the mark of an opening quote that was never closed and
  swallowed the rows after it (a CSV parser cannot tell the two apart by syntax). For a file without the image
  column, a continuation line with the header's number of fields counts as a record.

Relative image paths: a relative path in the image column is taken relative to the image root when one is given
(``--csv-image-root``, eval's ``--long-dci-root``), else relative to the folder of the CSV file itself, never to the
working directory (so a CSV with its images can be moved, and a run works from any folder).
"""
import csv
import logging
import mmap
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence

from training_ext.common.text_files import ENCODING, read_arrow_csv, text_stream

DEFAULT_SEPARATOR = "\t"
_SEPARATOR_NAMES = {"\t": "tab", ",": "comma", ";": "semicolon", "|": "'|'"}
_BOM = b"\xef\xbb\xbf"
REQUOTE_COMMAND = "python scripts/requote_csv.py"
# a whole quoted field: opening quote, any bytes but a lone quote, closing quote
_QUOTED_FIELD = re.compile(rb'"[^"]*(?:""[^"]*)*"')


class CsvFormatError(ValueError):
    """A CSV that breaks the standard CSV rules or the checks above; the message names file, line and fix."""


class CsvColumnError(CsvFormatError, KeyError):
    """A column the run asks for is not in the CSV's header; the message names the flag that sets it. Also a KeyError,
    which a missing column always raised."""

    def __str__(self):  # KeyError would print the message in quotes
        return str(self.args[0])


@dataclass
class CsvTable:
    """The requested columns of a CSV, as text after CSV unquoting.

    ``columns`` maps a column name to one ``str`` per data row. Line numbers are worked out only when a message
    needs one (``where``), by a second pass with the ``csv`` module, so a table of a million rows holds no per-row
    line list.
    """
    path: str
    header: List[str]
    columns: Dict[str, Sequence[str]]  # column name -> a value per data row (a list, Arrow array, FieldRanges)
    rows: int = 0
    separator: str = DEFAULT_SEPARATOR
    multiline_rows: int = 0          # data rows holding a quoted field that spans lines
    first_data_line: Optional[int] = None  # set when every record is one line and no line is empty: line = this + row
    record_starts: Optional[object] = None  # then also (rows + 1,) int64 byte offsets: row r is [starts[r], starts[r+1])
    _lines: Optional[List[int]] = field(default=None, repr=False)

    def __len__(self) -> int:
        return self.rows

    @property
    def lines(self) -> List[int]:
        """The file line (from 1) where every data row starts."""
        if self._lines is None:
            self._lines = record_start_lines(self.path, self.separator)[1:]
        return self._lines

    def line(self, row: int) -> int:
        """The file line (from 1) where data row ``row`` starts."""
        if self.first_data_line is not None:
            return self.first_data_line + int(row)
        return self.lines[row]

    def where(self, row: int) -> str:
        """``<path> line <n>, data row <row>``: how messages point at a data row (rows count from 0, as the teacher
        cache's ``row<N>`` keys do)."""
        return f"{self.path} line {self.line(row)}, data row {row}"


def _separator_name(separator: str) -> str:
    return _SEPARATOR_NAMES.get(separator, repr(separator))


def _separator_hint(header: List[str], separator: str) -> str:
    """When the header is one field holding another usual separator, the file was most likely written with it."""
    if len(header) != 1:
        return ""
    for other in _SEPARATOR_NAMES:
        if other != separator and other in header[0]:
            return (f"; the header is one field {header[0]!r}: the file looks {_separator_name(other)}-separated, "
                    f"pass --csv-separator {other!r}")
    return ""


_QUOTE_RULE = ("a field that starts with a double quote must be a whole quoted field (the closing quote is followed by "
               "the separator or the line end, inner quotes are doubled), as Python's csv module and pandas write "
               "it. Quote the field, or, if the whole file was written without quoting (every field as is, as "
               "this project's own CSV writer did in earlier releases), rewrite it in standard form with "
               f"`{REQUOTE_COMMAND} FILE`")


def _records(path: str, separator: str):
    """(start line, fields) of every non-empty record, read by the ``csv`` module in strict mode, for diagnostics and
    line numbers (the fast reader is pyarrow's). Raises CsvFormatError naming the record's start line where a quote
    breaks the rules, TextDecodeError for a file that is not UTF-8."""
    with text_stream(path) as stream:
        reader = csv.reader(stream, delimiter=separator, strict=True)
        line = 1
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as error:
                raise CsvFormatError(f"{path} line {line}: {error}; {_QUOTE_RULE}") from None
            if fields:
                yield line, fields
            line = reader.line_num + 1


def record_start_lines(path: str, separator: str = DEFAULT_SEPARATOR) -> List[int]:
    """The line (from 1) where each non-empty record of ``path`` starts, the header first. Raises CsvFormatError."""
    return [line for line, _ in _records(path, separator)]


def _read_header(path: str, separator: str):
    """(start line, fields) of the first record, read by the ``csv`` module."""
    for line, fields in _records(path, separator):
        return line, fields
    raise CsvFormatError(f"{path}: empty file (no header line)")


def _check_quoted_fields(path: str, separator: str) -> bool:
    """Every field that starts with a double quote is a whole quoted field (see the module docstring).

    One pass of ``mmap.find`` for quote characters: a quote after the separator, a line break or the file's start
    opens a quoted field, which is matched whole (so the quotes inside it are skipped, never taken for another
    field's start); any other quote is one inside an unquoted field, read verbatim. Returns whether a quoted field
    holds a line break (only a quoted field can span lines)."""
    spans_lines = False
    if os.path.getsize(path) == 0:
        return spans_lines
    sep = separator.encode(ENCODING)
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        start = len(_BOM) if data[:len(_BOM)] == _BOM else 0
        position = data.find(b'"', start)
        while position >= 0:
            if position == start or data[position - 1:position] in (sep, b"\n", b"\r"):
                match = _QUOTED_FIELD.match(data, position)
                if match is None:
                    _raise_at_record(path, separator, position, "a double quote that opens a field is never closed")
                end = match.end()
                if not (data[end:end + len(sep)] == sep or data[end:end + 1] in (b"\r", b"\n", b"")):
                    _raise_at_record(path, separator, position,
                                     "a quoted field is followed by more text before the separator or the line end")
                if not spans_lines:
                    field = match.group()
                    spans_lines = b"\n" in field or b"\r" in field
                position = data.find(b'"', end)
            else:
                position = data.find(b'"', position + 1)
    return spans_lines


def line_starts(path: str, chunk: int = 1 << 26):
    """(lines + 1,) int64: the byte offset where each line of ``path`` starts, then the file's size (so line i is
    ``[starts[i], starts[i + 1])``); a final line feed starts no line. Found with numpy over a memory map of the
    file, a chunk at a time (no copy of the file)."""
    import numpy as np
    size = os.path.getsize(path)
    parts = [np.zeros(1, dtype=np.int64)]
    if size:
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            view = np.frombuffer(data, dtype=np.uint8)
            for offset in range(0, size, chunk):
                parts.append(np.flatnonzero(view[offset:offset + chunk] == 10).astype(np.int64) + offset + 1)
            del view  # the memory map closes only when no array points into it
    starts = np.concatenate(parts)
    if starts[-1] != size:
        starts = np.append(starts, size)  # the last line has no line feed: its end is the file's end
    return starts


_CHUNK = 1 << 18  # bytes per numpy pass: a pass's temporaries stay in the CPU cache and are reused


@dataclass
class FieldRanges:
    """One column of a CSV whose records are one line each, as the byte range of each data row's value in the file:
    reading a 1.2M-row file makes no Python or Arrow string per row, and a value is read from the file (the OS page
    cache) when needed. A quoted field's range leaves its two quotes out; ``doubled`` marks the quoted fields
    that hold doubled quotes (``""`` is one quote of the value)."""
    path: str
    starts: object   # (rows,) int64 byte offsets
    ends: object     # (rows,) int64
    doubled: object  # (rows,) bool
    lines: object    # (rows + 1,) int64: data row r's whole record is the bytes [lines[r], lines[r + 1])
    data: object = field(default=None, repr=False, compare=False)  # the file's bytes (a memory map), shared

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, row: int):
        """The value of data row ``row`` as a ``pyarrow`` string scalar (``.as_py()``), as an Arrow column gives it."""
        return self.values([row])[0]

    def _bytes(self):
        return self.data if self.data is not None else _file_bytes(self.path)

    def first_bytes(self):
        """(rows,) int16: the first byte of each value, -1 for an empty value."""
        import numpy as np
        view = self._bytes()
        first = view[np.minimum(self.starts, max(len(view) - 1, 0))].astype(np.int16)
        first[self.ends <= self.starts] = -1
        return first

    def values(self, rows):
        """The values of ``rows`` ((K,) int array), unquoted, as one ``pyarrow.LargeStringArray``."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc
        view = self._bytes()
        # every value and every stretch between two values of the column, in file order, as one Arrow array over
        # the file's bytes (no copy): the values are its even items, and Arrow's take copies those out
        bounds = np.empty(2 * len(self) + 1, dtype=np.int64)
        bounds[0:-1:2], bounds[1:-1:2], bounds[-1] = self.starts, self.ends, len(view)
        pieces = pa.LargeStringArray.from_buffers(2 * len(self), pa.py_buffer(bounds), pa.py_buffer(view))
        rows = np.asarray(rows, dtype=np.int64)
        array = pieces.take(pa.array(2 * rows))
        doubled = self.doubled[rows]
        if doubled.any():
            array = pc.if_else(pa.array(doubled), pc.replace_substring(array, '""', '"'), array)
        return array

    def lines_matching(self, pattern: str):
        """(rows,) bool: whether RE2 ``pattern`` matches somewhere in each data row's whole record (a superset of
        the rows whose value it matches, for a pattern that holds no quote, separator or line break), found by Arrow
        over the file's bytes without a copy."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc
        records = pa.LargeStringArray.from_buffers(len(self), pa.py_buffer(self.lines - self.lines[0]),
                                                   pa.py_buffer(self._bytes()[self.lines[0]:]))
        return np.asarray(pc.match_substring_regex(records, pattern).to_numpy(zero_copy_only=False), dtype=bool)


def _file_bytes(path: str):
    """The bytes of ``path`` as a read-only (size,) uint8 numpy array over a memory map (no copy); the map is
    released with the last array that points into it."""
    import numpy as np
    if os.path.getsize(path) == 0:
        return np.zeros(0, dtype=np.uint8)
    with open(path, "rb") as handle:
        return np.frombuffer(mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ), dtype=np.uint8)


def _one_line_segment(view, low: int, high: int, sep: int, start: int):
    """The bytes [low, high) of a file (whole lines; ``start``: where the first field of the file starts, after a
    BOM) checked as lines of one-line records: (line feed positions, carriage return positions, positions of the
    separators outside quoted fields, quote positions, whether every byte is ASCII), or None when a line breaks a
    rule or a quoted field spans lines (see ``_one_line_columns``)."""
    import numpy as np
    signed, parts, kinds, ascii_only = view.view(np.int8), [], [], True
    for offset in range(low, high, _CHUNK):
        chunk = view[offset:min(offset + _CHUNK, high)]
        # as signed bytes, "< 14" finds line feeds, carriage returns, tabs and every byte of a non-ASCII character
        # (>= 128) in one pass, so an ASCII file needs no separate UTF-8 check
        special = signed[offset:offset + len(chunk)] < 14
        special |= chunk == 34
        if sep >= 14:
            special |= chunk == sep
        found = np.flatnonzero(special)
        kind = chunk[found]
        if (kind >= 128).any():
            ascii_only, found, kind = False, found[kind < 128], kind[kind < 128]
        parts.append(found + offset)
        kinds.append(kind)
    positions = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    kinds = np.concatenate(kinds) if kinds else np.zeros(0, dtype=np.uint8)
    is_feed, is_quote, is_separator = kinds == 10, kinds == 34, kinds == sep
    feeds, quotes, separators = positions[is_feed], positions[is_quote], positions[is_separator]
    returns = positions[kinds == 13]
    if len(returns) and (returns[-1] + 1 >= len(view) or (view[returns + 1] != 10).any()):
        return None  # a lone carriage return ends a line too: the full reader handles it
    if not len(quotes):
        return feeds, returns, separators, quotes, ascii_only
    line_of = np.cumsum(is_feed)  # the line (in this segment) of every special byte after a line feed
    line_of -= is_feed
    quote_tokens = np.flatnonzero(is_quote)
    run_first = np.flatnonzero(np.diff(quotes, prepend=-2) != 1)
    run_start = quotes[run_first]
    run_length = np.diff(run_first, append=len(quotes))
    run_line = line_of[quote_tokens[run_first]]
    before = view[np.maximum(run_start - 1, 0)]
    at_field_start = (run_start == start) | ((run_start > start) & ((before == sep) | (before == 10)))
    odd = run_length % 2 == 1
    index = np.arange(len(run_start))
    first_of_line = np.diff(run_line, prepend=-1) != 0
    # the last closing run (an odd run not at a field's start) or line start before each run, and the parity of
    # the toggling runs (odd, at a field's start) since: whether a quoted field is open after the run
    anchor = np.maximum.accumulate(np.where(~at_field_start & odd, index + 1, np.where(first_of_line, index, 0)))
    toggled = np.concatenate([[0], np.cumsum(at_field_start & odd)])
    inside_after = (toggled[index + 1] - toggled[anchor]) % 2 == 1
    inside_before = np.where(first_of_line, False, np.roll(inside_after, 1))
    closing = np.flatnonzero((at_field_start & ~odd & ~inside_before) | (inside_before & odd))
    after_end = run_start[closing] + run_length[closing]
    after = view[np.minimum(after_end, len(view) - 1)]
    if not ((after_end == len(view)) | (after == sep) | (after == 10) | (after == 13)).all():
        return None  # a quoted field followed by more text: the full reader names it
    if inside_after[np.diff(run_line, append=len(feeds) + 1) != 0].any():
        return None  # a quoted field spans lines
    # the last run before each separator, on the same line: the separator is inside a quoted field when one is open
    last_run = np.full(len(kinds), -1)
    last_run[quote_tokens[run_first]] = index
    last_run = np.maximum.accumulate(last_run)[is_separator]
    quoted = last_run >= 0
    quoted[quoted] = run_line[last_run[quoted]] == line_of[is_separator][quoted]
    quoted[quoted] = inside_after[last_run[quoted]]
    return feeds, returns, separators[~quoted], quotes, ascii_only


def _one_line_columns(path: str, separator: str, header: List[str], names: Sequence[str]):
    """For a file whose records are all one line, valid by every rule above, and valid UTF-8: (record starts,
    {name: FieldRanges}) of the columns ``names``, found by numpy passes over the file's bytes (no parse into
    strings); None for any other file (a field spanning lines, an empty line, a lone carriage return, any broken
    rule, a separator that is not one ASCII byte): the full reader reads it, or names what is wrong.

    How: the positions of the line feeds, separators, quotes and carriage returns are found a chunk at a time.
    Quotes are grouped into runs of adjacent quotes; outside a quoted field a run at a field's start opens one (an
    odd run leaves it open, an even one opens and closes it), any other run is verbatim; inside, an odd run closes
    it and an even one is doubled quotes. So an odd run at a field's start toggles the state and an odd run
    elsewhere leaves it closed: the state after each run is the parity of the toggling runs since the last
    closing run or line start, computed by cumulative sums. Separators inside quoted fields are not counted.
    Lines are independent, so the file is cut at line feeds into one segment per CPU, scanned in threads (numpy
    releases the GIL)."""
    import numpy as np
    import pyarrow as pa
    from concurrent.futures import ThreadPoolExecutor
    sep_bytes = separator.encode(ENCODING)
    if len(sep_bytes) != 1:
        return None
    sep = sep_bytes[0]
    view = _file_bytes(path)
    size = len(view)
    if not size:
        return None
    start = len(_BOM) if view[:len(_BOM)].tobytes() == _BOM else 0
    workers = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 8)
    cuts = [0]
    for point in range(1, workers if size >= 16 * _CHUNK else 1):
        feed = _next_feed(view, max(point * size // workers, cuts[-1]))
        if feed < 0 or feed + 1 >= size:
            break
        cuts.append(feed + 1)
    cuts.append(size)
    with ThreadPoolExecutor(len(cuts) - 1) as pool:
        segments = list(pool.map(lambda bounds: _one_line_segment(view, *bounds, sep, start),
                                 zip(cuts[:-1], cuts[1:])))
    if any(segment is None for segment in segments):
        return None
    feeds, returns, separators, quotes = (np.concatenate(parts) for parts in zip(*[segment[:4] for segment in
                                                                                     segments]))
    if not all(segment[4] for segment in segments):
        try:  # Arrow's UTF-8 check of the whole file
            pa.LargeStringArray.from_buffers(1, pa.py_buffer(np.array([0, size], dtype=np.int64)),
                                             pa.py_buffer(view)).validate(full=True)
        except pa.ArrowInvalid:
            return None
    lines = np.concatenate([[0], feeds + 1])
    if lines[-1] != size:
        lines = np.append(lines, size)
    count, width = len(lines) - 1, len(header) - 1
    ends = feeds if len(feeds) == count else np.append(feeds, size)  # the last line may end without a feed
    if len(returns):  # each is followed by a line feed (checked): that line ends before it
        ends = ends.copy()
        ends[np.searchsorted(feeds, returns + 1)] -= 1
    begins = lines[:-1].copy()
    begins[0] = start
    if (ends <= begins).any():
        return None  # an empty line (the full reader skips it)
    if len(separators) != count * width:
        return None  # a record with another number of fields
    # sorted separators, as many as every line needs: each line has its share when each share lies in its line
    grid = separators.reshape(count, width)
    if width and ((grid[:, 0] < begins) | (grid[:, -1] >= ends)).any():
        return None
    columns = {}
    for name in names:
        column = header.index(name)
        first = (begins if column == 0 else grid[:, column - 1] + 1)[1:]
        last = (ends if column == width else grid[:, column])[1:]
        is_quoted = (last > first) & (view[np.minimum(first, size - 1)] == 34)
        if (last - is_quoted < first + is_quoted).any():
            return None  # cannot happen after the checks above; Arrow must never see a range that ends first
        doubled = is_quoted.copy()
        doubled[is_quoted] = np.searchsorted(quotes, last[is_quoted]) - np.searchsorted(quotes, first[is_quoted]) > 2
        columns[name] = FieldRanges(path, first + is_quoted, last - is_quoted, doubled, lines[1:], view)
    return lines[1:], columns


def _next_feed(view, position: int) -> int:
    """The position of the first line feed at or after ``position``, -1 when none."""
    import numpy as np
    while position < len(view):
        found = np.flatnonzero(view[position:position + (1 << 16)] == 10)
        if len(found):
            return position + int(found[0])
        position += 1 << 16
    return -1


def _raise_at_record(path: str, separator: str, byte_offset: int, what: str):
    """Stop naming the line where the bad record starts: the strict csv pass raises there; if it does not, the line
    of ``byte_offset`` is named."""
    for _ in _records(path, separator):
        pass
    with open(path, "rb") as handle:
        line = handle.read(byte_offset).count(b"\n") + 1
    raise CsvFormatError(f"{path} line {line}: {what}; {_QUOTE_RULE}")


def _image_suffixes(column) -> set:
    """The lower-case file extensions (``.jpg``) of an Arrow string column's values."""
    import pyarrow.compute as pc
    suffixes = pc.struct_field(pc.extract_regex(pc.utf8_lower(column), r"(?P<suffix>\.[^./\\\s]+)$"), [0])
    return set(pc.unique(suffixes.drop_null()).to_pylist())


def _looks_like_record(line: str, separator: str, header: List[str], image_index: Optional[int],
                       suffixes: set) -> bool:
    fields = line.split(separator)
    if image_index is None:
        return len(fields) == len(header)
    if len(fields) <= image_index:
        return False
    value = fields[image_index].strip()
    return bool(value) and not any(c.isspace() for c in value) and os.path.splitext(value)[1].lower() in suffixes


def _check_multiline(path: str, separator: str, header: List[str], arrow_columns: Dict,
                     image_key: Optional[str]) -> int:
    """Count the rows with a field spanning lines, in any column; refuse one whose continuation looks like a record
    (see the module docstring). Vectorised over the columns; only the flagged rows are looked at in Python."""
    import pyarrow.compute as pc
    flagged = None
    for array in arrow_columns.values():
        spans = pc.or_(pc.match_substring(array, "\n"), pc.match_substring(array, "\r"))
        flagged = spans if flagged is None else pc.or_(flagged, spans)
    rows = pc.indices_nonzero(flagged).to_pylist() if flagged is not None else []
    if not rows:
        return 0
    image_index = header.index(image_key) if image_key in header else None
    suffixes = _image_suffixes(arrow_columns[image_key]) if image_index is not None else set()
    for row in rows:
        for name, values in arrow_columns.items():
            for continuation in re.split(r"\r\n|\r|\n", values[row].as_py())[1:]:
                if _looks_like_record(continuation, separator, header, image_index, suffixes):
                    line = record_start_lines(path, separator)[1 + row]
                    raise CsvFormatError(
                        f"{path} line {line}, data row {row}: the quoted field of column {name!r} spans lines and a "
                        f"continuation line looks like a row of this file ({continuation[:80]!r}): most likely a "
                        f"double quote that opens the field is never closed and swallowed the rows after it. Close "
                        f"the quote, or write the field without a leading quote (a quote inside a field is read "
                        f"verbatim), or rewrite a file written without quoting with `{REQUOTE_COMMAND} FILE`")
    return len(rows)


# tables read ahead by a check made before any model is built, each handed to the one next read with the same
# arguments of the unchanged file (so the check costs no second parse of a 1.2M-row CSV)
_READ_AHEAD: Dict[tuple, "CsvTable"] = {}


def _read_key(path: str, wanted: Mapping[str, str], separator: str, image_key: Optional[str], arrow: bool) -> tuple:
    stat = os.stat(path)
    return (os.path.abspath(path), stat.st_size, stat.st_mtime_ns, tuple(sorted(wanted.items())), separator,
            image_key, arrow)


def read_csv_table(path: str, columns_by_flag: Mapping[str, Optional[str]],
                   separator: str = DEFAULT_SEPARATOR, image_key: Optional[str] = None,
                   arrow: bool = False, keep: bool = False) -> CsvTable:
    """Read ``path`` by the rules above, keeping the columns named in ``columns_by_flag`` ({flag that names the
    column, e.g. ``--csv-caption-key``: column name}; a None column is not wanted).

    ``image_key`` names the image column for the multi-line check when the caller does not read it (stage 1 reads
    only captions); a name that is not in the header falls back to the field-count rule. A ``--csv-img-key`` entry
    of ``columns_by_flag`` is used when ``image_key`` is not given. With ``keep``, the table is also kept for the
    next call with the same arguments on the unchanged file, which returns it instead of reading again (a check
    before any model is built, then the dataset). With ``arrow``, each column is one
    ``pyarrow.ChunkedArray`` of large strings (flat buffers, no Python object per row: what the training datasets
    keep) or, for a file whose records are one line each, a ``FieldRanges`` (each row's byte range in the file: no
    text held; ``values(rows)`` gives Arrow strings), else a list of ``str``.

    Raises FileNotFoundError; TextDecodeError (a file that is not UTF-8: line and byte offset); CsvColumnError (a
    column is missing: names the flag to set and, for a file written with another separator, ``--csv-separator``);
    CsvFormatError (no header, a repeated column name, a record whose field count differs from the header's, a field
    that opens a quote it does not close where it ends, or a multi-line field that swallowed rows).
    """
    if len(separator) != 1 or separator in '"\r\n':
        raise ValueError(f"--csv-separator must be one character other than a quote or line break, got {separator!r}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CSV file not found: {path}")
    wanted = {flag: column for flag, column in columns_by_flag.items() if column is not None}
    key = _read_key(path, wanted, separator, image_key or wanted.get("--csv-img-key"), arrow)
    if key in _READ_AHEAD:
        return _READ_AHEAD[key] if keep else _READ_AHEAD.pop(key)
    table = _read(path, wanted, separator, image_key, arrow)
    if keep:
        _READ_AHEAD[key] = table
    return table


def _read(path: str, wanted: Mapping[str, str], separator: str, image_key: Optional[str], arrow: bool) -> CsvTable:
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    header_line, header = _read_header(path, separator)
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise CsvFormatError(f"{path} line {header_line}: column name(s) {repeated} occur more than once in the header")
    for flag, column in wanted.items():
        if column not in header:
            raise CsvColumnError(
                f"{path}: no column {column!r} (the header, split at {_separator_name(separator)}s, has "
                f"{', '.join(map(repr, header))}); set the column with {flag}" + _separator_hint(header, separator))
    image_key = image_key or wanted.get("--csv-img-key")
    fast = _one_line_columns(path, separator, header, list(wanted.values())) if arrow and header_line == 1 else None
    if fast is not None:  # the usual file, checked by every rule without parsing it into strings
        starts, columns = fast
        return CsvTable(path=path, header=header, columns=columns, rows=len(starts) - 1, separator=separator,
                        first_data_line=2, record_starts=starts)
    spans_lines = _check_quoted_fields(path, separator)
    needed = set(wanted.values()) or set(header[:1])
    try:
        arrow_table = read_arrow_csv(
            path,
            read_options=pa_csv.ReadOptions(column_names=header, skip_rows=0, block_size=1 << 24),
            parse_options=pa_csv.ParseOptions(delimiter=separator, quote_char='"', double_quote=True,
                                              newlines_in_values=True, ignore_empty_lines=True),
            convert_options=pa_csv.ConvertOptions(
                # every column when a field spans lines (the multi-line check looks at all), else only those needed
                include_columns=header if spans_lines else [name for name in header if name in needed],
                column_types={name: pa.large_string() for name in header},
                strings_can_be_null=False, quoted_strings_can_be_null=False))
    except pa.ArrowInvalid as error:
        _diagnose(path, separator, header, error)
    # the header is the first record: the reader was given the names, so it reads the header as a data row
    arrow_table = arrow_table.slice(1)
    # every column takes part in the multi-line check: an unclosed quote in a column no one reads loses rows too
    multiline = _check_multiline(path, separator, header, {name: arrow_table.column(name) for name in header},
                                 image_key) if spans_lines else 0
    if multiline:
        logging.info(f"{path}: {multiline} rows hold a quoted field that spans lines (accepted as CSV writers "
                     f"quote them)")
    columns = {column: arrow_table.column(column) for column in wanted.values()}
    if not arrow:
        columns = {column: values.to_pylist() for column, values in columns.items()}
    # every record on one line and no empty line: a row's line is arithmetic, and its bytes are one line
    starts = None if spans_lines else line_starts(path)
    one_line_each = starts is not None and len(starts) - 1 == header_line + arrow_table.num_rows
    return CsvTable(path=path, header=header, columns=columns, rows=arrow_table.num_rows, separator=separator,
                    multiline_rows=multiline, first_data_line=header_line + 1 if one_line_each else None,
                    record_starts=starts[header_line:] if one_line_each else None)


def _diagnose(path: str, separator: str, header: List[str], error: Exception):
    """Stop on a record pyarrow could not read, naming the line where it starts (a csv-module pass finds it)."""
    for line, fields in _records(path, separator):
        if len(fields) != len(header):
            raise CsvFormatError(
                f"{path} line {line}: {len(fields)} fields, expected {len(header)} like the header (fields are "
                f"separated by {_separator_name(separator)}s; a field holding a {_separator_name(separator)} or a "
                f"line break must be quoted, as Python's csv module and pandas quote it)")
    raise CsvFormatError(f"{path}: not readable as CSV: {error}")


def image_base(csv_path: str, image_root: Optional[str] = None) -> str:
    """The folder relative image paths of ``csv_path`` start from: ``image_root`` if given, else the CSV's folder."""
    return os.path.abspath(os.path.expanduser(image_root)) if image_root else os.path.dirname(os.path.abspath(csv_path))


def resolve_image_path(path: str, base: str) -> str:
    """``path`` as written in a CSV (or an annotation file), made absolute against ``base`` when it is relative."""
    path = os.path.expanduser(str(path))
    return os.path.abspath(path if os.path.isabs(path) else os.path.join(base, path))
