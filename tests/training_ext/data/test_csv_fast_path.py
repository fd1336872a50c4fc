"""The vectorised reader of one-line CSVs (csv_table._one_line_columns) against the full reader it stands in for
(pyarrow's parser plus the project's checks): on randomised files (quoted fields, doubled quotes, separators and
line breaks inside quotes, CRLF, BOM, lone carriage returns, empty lines, blank captions, wrong field counts,
verbatim quotes, bytes that are not UTF-8) both give the same rows, values and row locations, or the same error.
The training datasets built on either skip the same captions; the image check that lists folders finds the same
files as one stat per name."""
import csv
import io
import os
import random

import numpy as np
import open_clip
import pytest

from support.training_helpers import STUDENT
from training_ext.common import csv_table
from training_ext.common.csv_table import FieldRanges, read_csv_table
from training_ext.data import csv_datasets

_PIECES = ["a", "b c", " ", "\t", '"', '""', "\n", "\r\n", "\r", "é", "\u3000", ",", "", "x.jpg", "  "]


def _random_file(rng: random.Random) -> bytes:
    """A small tab-separated file: mostly written by csv.writer (valid), sometimes verbatim or damaged."""
    columns = rng.choice([["filepath", "title"], ["filepath", "title", "note"], ["title"]])
    rows = [columns]
    for _ in range(rng.randint(0, 6)):
        # mostly one-line fields, so that most files are for the fast reader; some hold any piece
        pieces = _PIECES if rng.random() < 0.2 else [p for p in _PIECES if p not in ("\n", "\r\n", "\r")]
        rows.append(["".join(rng.choice(pieces) for _ in range(rng.randint(0, 4))) for _ in columns])
    if rng.random() < 0.15 and len(rows) > 1:  # a record with another number of fields
        rows[rng.randrange(1, len(rows))].append("extra")
    stream = io.StringIO(newline="")
    if rng.random() < 0.8:
        csv.writer(stream, delimiter="\t", lineterminator=rng.choice(["\n", "\r\n"])).writerows(rows)
    else:  # written verbatim, as the project's writer did before quoting
        stream.write("".join("\t".join(row) + "\n" for row in rows))
    data = stream.getvalue().encode("utf-8")
    if rng.random() < 0.1:
        data = b"\xef\xbb\xbf" + data
    if rng.random() < 0.1:
        data = data.rstrip(b"\r\n")
    if rng.random() < 0.05:
        data += b"\n\n"
    if rng.random() < 0.05:
        cut = rng.randrange(len(data) + 1)
        data = data[:cut] + rng.choice([b"\xff", b"\r", b'"', b"\t"]) + data[cut:]
    return data


def _outcome(path: str, columns: dict):
    """What read_csv_table makes of ``path``: the error, or the rows, locations and values of ``columns``."""
    try:
        table = read_csv_table(path, columns, arrow=True)
    except Exception as error:  # noqa: BLE001 (the error itself is compared)
        return type(error).__name__, str(error)
    values = {}
    for name, column in table.columns.items():
        read = column.values(np.arange(len(column))) if isinstance(column, FieldRanges) else column
        values[name] = read.to_pylist()
    starts = None if table.record_starts is None else table.record_starts.tolist()
    return table.rows, table.header, table.first_data_line, starts, values, [table.line(r) for r in range(table.rows)]


def test_the_vectorised_reader_agrees_with_the_full_reader_on_random_files(tmp_path, monkeypatch):
    rng = random.Random(7)
    full = csv_table._one_line_columns
    taken = []

    def counted(*args):
        result = full(*args)
        taken.append(result is not None)
        return result

    for index in range(300):
        path = str(tmp_path / f"{index}.csv")
        with open(path, "wb") as handle:
            handle.write(_random_file(rng))
        header = next(csv.reader(io.StringIO(open(path, encoding="utf-8-sig", errors="replace").readline()),
                                 delimiter="\t"), [])
        columns = {f"--{name}": name for name in header if name in ("filepath", "title", "note")}
        monkeypatch.setattr(csv_table, "_one_line_columns", counted)
        fast = _outcome(path, columns)
        monkeypatch.setattr(csv_table, "_one_line_columns", lambda *args: None)
        assert fast == _outcome(path, columns), open(path, "rb").read()
    # neither side is vacuous: many files are read by the vectorised reader, many are left to the full reader
    assert 100 < sum(taken) < len(taken) - 30


@pytest.mark.parametrize("ending", ["\n", "\r\n"])
def test_quoted_values_separators_and_doubled_quotes_read_as_pandas_reads_them(tmp_path, ending):
    import pandas as pd
    rows = [("filepath", "title"), ("a.jpg", 'The sign says "OPEN".'), ('"q".jpg', "tab\tinside"),
            ("b.jpg", '"Quoted at the start," then more.'), ("c.jpg", 'ends with a quote"'), ("d.jpg", '""'),
            ("e.jpg", 'verbatim "quote'), ("f.jpg", "")]
    path = str(tmp_path / "q.csv")
    with open(path, "w", newline="", encoding="utf-8") as stream:
        csv.writer(stream, delimiter="\t", lineterminator=ending).writerows(rows)
    with open(path, "a", encoding="utf-8", newline="") as stream:
        stream.write(f'g.jpg\tverbatim "inner" quotes{ending}')  # a quote inside an unquoted field is text
    expected = pd.read_csv(path, sep="\t", keep_default_na=False, dtype=str)
    table = read_csv_table(path, {"--csv-img-key": "filepath", "--csv-caption-key": "title"}, arrow=True)
    assert isinstance(table.columns["title"], FieldRanges)  # the vectorised reader read it
    for name in ("filepath", "title"):
        column = table.columns[name]
        assert column.values(np.arange(len(column))).to_pylist() == expected[name].tolist()
        order = [6, 0, 0, 3]  # any rows, in any order, repeated
        assert column.values(order).to_pylist() == [expected[name][i] for i in order]
        assert [column[i].as_py() for i in order] == [expected[name][i] for i in order]


def test_both_readers_skip_the_same_captions_in_both_stages(tmp_path, monkeypatch):
    tokenizer = open_clip.get_tokenizer(STUDENT)
    captions = ["A plain caption.", "", "   ", "\u3000\xa0", '"  "', "\x85", "(a) bracketed", "...", "1234",
                "<start_of_text>", "&nbsp;", "caption with &amp; inside", "\x1b[0m", "&nbsp; A real caption.",
                "é accented start", 'The sign says "OPEN".', "<END_OF_TEXT>"]
    folder = tmp_path / "data"
    os.makedirs(folder / "images")
    path = str(folder / "c.csv")
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream, delimiter="\t")
        writer.writerow(["filepath", "title"])
        for index, caption in enumerate(captions):
            (folder / "images" / f"{index}.png").write_bytes(b"")
            writer.writerow([f"images/{index}.png", caption])

    def build():
        stage1 = csv_datasets.CsvTextDataset(path, "title", tokenizer)
        stage2 = csv_datasets.CsvImageTextDataset(path, "filepath", "title", tokenizer, None)
        return (stage1.row_numbers.tolist(), list(stage1.captions), stage1.skips.counts(),
                stage2.row_numbers.tolist(), list(stage2.image_paths), stage2.skips.counts())

    fast = build()
    assert 0 < len(fast[0]) < len(captions)  # some kept, some skipped
    monkeypatch.setattr(csv_table, "_one_line_columns", lambda *args: None)
    assert fast == build()


def _tree(tmp_path):
    home = tmp_path / "home"
    for name in ("base/a.png", "base/sub/b.png", "home/c.png", "elsewhere/d.png", "base/~e.png"):
        os.makedirs(os.path.dirname(tmp_path / name), exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    os.makedirs(tmp_path / "base" / "many")
    for index in range(10):
        (tmp_path / "base" / "many" / f"f{index}.png").write_bytes(b"x")
    os.symlink(tmp_path / "base" / "a.png", tmp_path / "base" / "link.png")
    os.symlink(tmp_path / "base" / "gone.png", tmp_path / "base" / "broken.png")
    return str(tmp_path / "base"), str(home)


@pytest.mark.parametrize("slack", [4096, 0])
def test_folder_listings_find_the_files_one_stat_per_name_finds(tmp_path, monkeypatch, slack):
    import pyarrow as pa
    from training_ext.common.csv_table import resolve_image_path
    base, home = _tree(tmp_path)
    monkeypatch.setenv("HOME", home)
    monkeypatch.setattr(csv_datasets, "_LISTED", 1)  # every folder is listed
    monkeypatch.setattr(csv_datasets, "_LISTING_SLACK", slack)
    names = ["a.png", "./a.png", "sub/b.png", "sub//b.png", "sub/../a.png", "~/c.png", "~e.png",
             str(tmp_path / "elsewhere" / "d.png"), "missing.png", "nofolder/x.png", "sub", "sub/", "link.png",
             "broken.png", "A.PNG", "/", "/nonexistent-folder-xyz/a.png", "many/f3.png"]
    column = pa.chunked_array([pa.array(names, pa.large_string())])
    rows = np.array([16, 3, 0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 17])
    listed, stats = [], []
    scandir, isfile = os.scandir, os.path.isfile
    monkeypatch.setattr(os, "scandir", lambda folder: listed.append(folder) or scandir(folder))
    monkeypatch.setattr(os.path, "isfile", lambda path: stats.append(path) or isfile(path))
    present = csv_datasets.existing_files(column, rows, base, chunk=4).tolist()
    monkeypatch.setattr(os.path, "isfile", isfile)
    assert present == [isfile(resolve_image_path(names[r], base)) for r in rows]  # the naive, per-path rule
    assert present[2:5] == [True, True, True] and present[9] is False
    assert len(listed) == len(set(listed))  # each folder once
    # names found in a listing, or in a folder that does not exist, need no stat
    assert not {os.path.join(base, n) for n in ("sub/b.png", "link.png", "nofolder/x.png")} & set(stats)
    # a folder of 10 entries for 1 name is listed only while 4 entries per name plus the slack allow it
    assert (os.path.join(base, "many/f3.png") in stats) == (not slack) and present[-1]
