"""The one reader of open_clip caption CSVs: training (both stages and ``training_ext.main``), evaluation (``--csv``,
Long-DCI), teacher-cache precompute and data preparation all read a CSV through ``read_csv_table``.

Quoting rule: a row is one line; fields are separated by the separator (a tab unless ``--csv-separator`` says
otherwise) and are never quoted. A double quote is an ordinary character, so a caption such as ``"Stop" he said``
or one with an opening quote that never closes is read verbatim. A field therefore cannot hold the separator or a
line break: the project's writer (``training_ext.common.file_io.write_tsv``) refuses such a field instead of quoting
it, and the reader stops at a row with the wrong number of fields, naming the file and line. Empty lines are
skipped; the first non-empty line is the header.

Relative image paths: a relative path in the image column is taken relative to the image root when one is given
(``--csv-image-root``, eval's ``--long-dci-root``), else relative to the folder of the CSV file itself, never to the
working directory (so a CSV with its images can be moved, and a run works from any folder).
"""
import os
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional

from training_ext.common.text_files import text_lines

DEFAULT_SEPARATOR = "\t"
_SEPARATOR_NAMES = {"\t": "tab", ",": "comma", ";": "semicolon", "|": "'|'"}


class CsvFormatError(ValueError):
    """A CSV that does not follow the project's CSV rule (field count, header); the message names file and line."""


class CsvColumnError(CsvFormatError, KeyError):
    """A column the run asks for is not in the CSV's header; the message names the flag that sets it. Also a KeyError,
    which a missing column always raised."""

    def __str__(self):  # KeyError would print the message in quotes
        return str(self.args[0])


@dataclass
class CsvTable:
    """The requested columns of a CSV, as text exactly as written."""
    path: str
    header: List[str]
    lines: List[int]                 # the file line (from 1) of every data row
    columns: Dict[str, List[str]]    # column name -> one value per data row

    def __len__(self) -> int:
        return len(self.lines)

    def where(self, row: int) -> str:
        """``<path> line <n>, data row <row>``: how messages point at a data row (rows count from 0, as the teacher
        cache's ``row<N>`` keys do)."""
        return f"{self.path} line {self.lines[row]}, data row {row}"


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


def read_csv_table(path: str, columns_by_flag: Mapping[str, Optional[str]],
                   separator: str = DEFAULT_SEPARATOR) -> CsvTable:
    """Read ``path`` by the rule above, keeping the columns named in ``columns_by_flag`` ({flag that names the
    column, e.g. ``--csv-caption-key``: column name}; a None column is not wanted).

    Raises FileNotFoundError; TextDecodeError (a file that is not UTF-8: line and byte offset); CsvColumnError (a
    column is missing: names the flag to set and, for a file written with another separator, ``--csv-separator``);
    CsvFormatError (no header, a repeated column name, or a row whose field count differs from the header's).
    """
    if not separator:
        raise ValueError("the CSV separator may not be empty")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CSV file not found: {path}")
    wanted = {flag: column for flag, column in columns_by_flag.items() if column is not None}
    header, index, lines, values = None, {}, [], {column: [] for column in wanted.values()}
    for number, line in text_lines(path):
        if line == "":
            continue
        fields = line.split(separator)
        if header is None:
            header = fields
            repeated = sorted({name for name in header if header.count(name) > 1})
            if repeated:
                raise CsvFormatError(f"{path} line {number}: column name(s) {repeated} occur more than once in the "
                                     f"header")
            for flag, column in wanted.items():
                if column not in header:
                    raise CsvColumnError(
                        f"{path}: no column {column!r} (the header, split at {_separator_name(separator)}s, has "
                        f"{', '.join(map(repr, header))}); set the column with {flag}"
                        + _separator_hint(header, separator))
            index = {column: header.index(column) for column in values}
            continue
        if len(fields) != len(header):
            raise CsvFormatError(
                f"{path} line {number}: {len(fields)} fields, expected {len(header)} like the header. Fields are "
                f"separated by {_separator_name(separator)}s and never quoted, so a field may not contain a "
                f"{_separator_name(separator)} or a line break"
                + (" (quoted fields are not supported: write the file tab-separated)" if separator != "\t" else ""))
        lines.append(number)
        for column, position in index.items():
            values[column].append(fields[position])
    if header is None:
        raise CsvFormatError(f"{path}: empty file (no header line)")
    return CsvTable(path=path, header=header, lines=lines, columns=values)


def image_base(csv_path: str, image_root: Optional[str] = None) -> str:
    """The folder relative image paths of ``csv_path`` start from: ``image_root`` if given, else the CSV's folder."""
    return os.path.abspath(os.path.expanduser(image_root)) if image_root else os.path.dirname(os.path.abspath(csv_path))


def resolve_image_path(path: str, base: str) -> str:
    """``path`` as written in a CSV (or an annotation file), made absolute against ``base`` when it is relative."""
    path = os.path.expanduser(str(path))
    return os.path.abspath(path if os.path.isabs(path) else os.path.join(base, path))
