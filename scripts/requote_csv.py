#!/usr/bin/env python
"""Rewrite a CSV whose fields were written verbatim (never quoted) as standard CSV, the way Python's csv module
and pandas write it, so that every standard reader (pandas, the csv module, open_clip_train, this project) reads
back exactly the text that was written.

Which files need it: this project's writers wrote captions verbatim between commit 1fecb9f and the standard-CSV
reader, and so do hand-made files (`"\\t".join(fields)`). Such a file reads back differently as CSV only where a
field starts with a double quote (`"Stop" he said`); the project's reader refuses those and names this script.
Each line of the input is one row, split at the separator; quotes are kept as they are. A line with another number
of fields than the header stops the run with its line number. The output is written atomically; by default it
replaces the input, after the input has been copied to FILE.verbatim.

Example:
  python scripts/requote_csv.py data/train.csv              # rewrites in place, keeps data/train.csv.verbatim
  python scripts/requote_csv.py data/train.csv --output data/train.std.csv
"""
import argparse
import csv
import re
import shutil
import sys

from training_ext.common.file_io import write_tsv
from training_ext.common.text_files import text_stream


# a whole field as a CSV writer quotes one holding a quote: opening quote, doubled inner quotes, closing quote
_WRITER_QUOTED = re.compile(r'"(?:[^"]|"")*""(?:[^"]|"")*"')


def verbatim_rows(path: str, separator: str):
    """The rows of a file written without quoting: the csv module with quoting off reads every byte as written.

    Raises ValueError for a line with another field count than the header, and for a field quoted the way a CSV
    writer quotes a field holding a quote (``"a ""b"" c"``): such a file was written with quoting, at least in part,
    and rewriting it would put the quoting into the text."""
    with text_stream(path) as stream:
        reader = csv.reader(stream, delimiter=separator, quoting=csv.QUOTE_NONE, strict=True)
        header = None
        for fields in reader:
            if not fields:
                continue
            if header is None:
                header = fields
            elif len(fields) != len(header):
                raise ValueError(f"{path} line {reader.line_num}: {len(fields)} fields, expected {len(header)} "
                                 f"like the header: not a file written one row per line")
            quoted = next((field for field in fields if _WRITER_QUOTED.fullmatch(field)), None)
            if quoted is not None:
                raise ValueError(f"{path} line {reader.line_num}: {quoted[:60]!r} is quoted as a CSV writer quotes "
                                 f"(doubled inner quotes): this file was written with quoting, at least in part, so "
                                 f"it is not rewritten; correct the lines the reader names by hand instead")
            yield fields


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", help="the verbatim-written CSV")
    parser.add_argument("--output", help="where to write the standard CSV (default: replace FILE, keeping the "
                                         "original as FILE.verbatim)")
    parser.add_argument("--csv-separator", default="\t", help="the field separator (default: tab)")
    args = parser.parse_args(argv)
    try:
        rows = list(verbatim_rows(args.file, args.csv_separator))
    except (OSError, ValueError, csv.Error) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not rows:
        print(f"error: {args.file} is empty", file=sys.stderr)
        return 2
    output = args.output or args.file
    if not args.output:
        shutil.copy2(args.file, args.file + ".verbatim")
    count = write_tsv(output, rows[0], rows[1:], separator=args.csv_separator)
    print(f"{count} rows written to {output} in standard CSV form"
          + ("" if args.output else f" (the original is kept as {args.file}.verbatim)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
