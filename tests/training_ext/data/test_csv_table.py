"""One CSV reader and one rule for every reader of open_clip CSVs: training (both stages and training_ext.main),
evaluation (--csv, Long-DCI), teacher-cache precompute and data preparation.

Rule: a file is read as Python's csv module and pandas write it and as pandas reads it back (quoted fields, doubled
quotes, quoted separators and line breaks, BOM, CRLF; values stay text); checks added on top name the file and the
line where a bad record starts; relative image paths start from the image root or else from the CSV's folder.
The reference for every reader is pandas' read_csv of the same file (what open_clip_train's CsvDataset and TULIP's
evaluation read), computed in the test."""
import argparse
import csv
import logging
import os
import subprocess
import sys

import open_clip
import open_clip_train.data
import pandas as pd
import pytest
import torch

from support.training_helpers import STUDENT, TEACHER, write_image
from training_ext.common.captions import clean_caption, first_sentence
from training_ext.common.csv_table import CsvColumnError, CsvFormatError, read_csv_table
from training_ext.common.file_io import write_tsv
from training_ext.data.keyed_captions import csv_captions
from training_ext.data.loaders import CsvImageTextDataset, CsvTextDataset
from training_ext.engine import open_clip_train_patches
from training_ext.eval import runner
from training_ext.eval.datasets import BenchmarkError, read_caption_csv, read_long_dci
from training_ext.main import _take_csv_image_root
from training_ext.prep.sources import samples_from_csv

TOKENIZE = open_clip.get_tokenizer(STUDENT)
_, _, PREPROCESS = open_clip.create_model_and_transforms(TEACHER)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

QUOTED = [
    'The sign reads "STOP" in red.',                            # inner quotes: the writers quote and double them
    '"Hello," she wrote, "and goodbye."',                       # a caption that starts with a quote
    'An "unclosed quote opens here and the sentence goes on.',  # one lone quote
    "A caption with a\ttab inside.",                            # the separator inside a field
    "Two lines:\nthe second line of a DCI extra caption.",      # a line break inside a field
    "CRLF inside:\r\nstill one caption.",
    "NA",                                                       # text, not a missing value
    "null",
    "1234",                                                     # text, not a number
] + [f"Plain caption number {i} of the held-out split." for i in range(3)]


def _rows_file(folder, name, lines, separator="\t"):
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    with open(path, "w", encoding="utf-8") as stream:
        stream.write("".join(separator.join(fields) + "\n" for fields in lines))
    return path


def _write_csv_module(path, rows, **writer_options):
    with open(path, "w", encoding="utf-8", newline="") as stream:  # TULIP's sharegpt_prepocessing.py
        csv.writer(stream, delimiter="\t", **writer_options).writerows(rows)


def _write_pandas(path, rows, index=False):
    pd.DataFrame(rows[1:], columns=list(rows[0])).to_csv(path, sep="\t", index=index)  # TULIP's dci_long_part.py


def _write_project(path, rows):
    write_tsv(path, rows[0], rows[1:])


def _write_bom_crlf(path, rows):  # a spreadsheet's export: BOM and CRLF line ends
    with open(path, "w", encoding="utf-8-sig", newline="") as stream:
        csv.writer(stream, delimiter="\t", lineterminator="\r\n").writerows(rows)


WRITERS = {"csv-module": _write_csv_module, "pandas": _write_pandas, "pandas-with-index": lambda p, r:
           _write_pandas(p, r, index=True), "project": _write_project, "bom-crlf": _write_bom_crlf}


def _split(tmp_path, captions=QUOTED, relative=True, image_dir="images", writer=_write_project):
    """A tab-separated CSV with real images, written by ``writer``; image paths relative to the CSV's folder unless
    relative=False."""
    folder = tmp_path / "split"
    (folder / image_dir).mkdir(parents=True, exist_ok=True)
    rows = [("filepath", "title")]
    for index, caption in enumerate(captions):
        image = folder / image_dir / f"{index}.png"
        write_image(str(image), index)
        rows.append((f"{image_dir}/{index}.png" if relative else str(image), caption))
    path = str(folder / "held.csv")
    writer(path, rows)
    return path, folder


def _pandas_captions(path):
    """The independent reference: what open_clip_train's CsvDataset (pandas) reads, NA conversion off."""
    return pd.read_csv(path, sep="\t", keep_default_na=False, dtype=str)["title"].tolist()


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_every_reader_reads_what_standard_writers_wrote(tmp_path, monkeypatch, writer):
    path, folder = _split(tmp_path, writer=WRITERS[writer])
    expected = _pandas_captions(path)
    assert expected == QUOTED  # the writers round-trip through pandas: the reference is the text written
    cleaned = [clean_caption(c) for c in QUOTED]  # training and eval collapse white space in a caption
    with open(path, newline="", encoding="utf-8-sig") as stream:
        assert [row[-1] for row in csv.reader(stream, delimiter="\t")][1:] == QUOTED  # and through the csv module

    assert read_csv_table(path, {"--csv-caption-key": "title"}).columns["title"] == expected
    assert list(CsvTextDataset(path, "title", TOKENIZE).captions) == cleaned                      # stage 1
    stage2 = CsvImageTextDataset(path, "filepath", "title", TOKENIZE, PREPROCESS)          # stage 2, validation
    assert list(stage2.captions) == cleaned
    assert [r.caption for r in csv_captions(path)] == cleaned                              # teacher-cache precompute
    assert [s.caption for s in samples_from_csv(path)] == cleaned                          # data preparation
    assert read_caption_csv(path).captions == cleaned                                      # eval --csv / Long-DCI
    assert read_long_dci(path).captions == cleaned
    args = runner.parse_args(["--model", TEACHER, "--csv", f"held={path}", "--no-progress"])
    (held,) = runner.load_benchmarks(args)
    assert held.data.captions == cleaned and len(held.data.image_paths) == len(QUOTED)

    # training_ext.main: open_clip_train's get_csv_dataset builds the project's dataset after the patch
    monkeypatch.setattr(open_clip_train.data, "CsvDataset", open_clip_train.data.CsvDataset)  # restored after
    open_clip_train_patches.use_project_csv_reader()
    flags = argparse.Namespace(val_data=path, csv_img_key="filepath", csv_caption_key="title", csv_separator="\t",
                               batch_size=8, workers=0, distributed=False)
    data = open_clip_train.data.get_csv_dataset(flags, PREPROCESS, is_train=False, tokenizer=TOKENIZE)
    assert isinstance(data.dataloader.dataset, open_clip_train_patches.OpenClipTrainCsvDataset)
    image, ids = data.dataloader.dataset[1]
    assert image.shape == (3, 32, 32) and torch.equal(ids, TOKENIZE([cleaned[1]])[0])


def test_project_writer_output_reads_back_identically_in_pandas_csv_module_and_open_clip_train(tmp_path):
    path = str(tmp_path / "out.csv")
    rows = [("filepath", "title")] + [(f"{i}.png", caption) for i, caption in enumerate(QUOTED)]
    assert write_tsv(path, rows[0], rows[1:]) == len(QUOTED)
    with open(path, newline="", encoding="utf-8") as stream:
        assert [tuple(row) for row in csv.reader(stream, delimiter="\t")] == rows
    assert _pandas_captions(path) == QUOTED
    write_image(str(tmp_path / "0.png"), 0)
    stock = open_clip_train.data.CsvDataset.__init__  # open_clip_train's own class, unpatched, reads the same text
    dataset = object.__new__(open_clip_train.data.CsvDataset)
    stock(dataset, path, PREPROCESS, "filepath", "title", sep="\t", tokenizer=TOKENIZE)
    # open_clip_train keeps pandas' NA conversion ('NA' and 'null' become nan): the one place it and we differ
    read = [str(c) for c in dataset.captions]
    kept = [i for i, w in enumerate(QUOTED) if w not in ("NA", "null")]
    assert [read[i] for i in kept] == [QUOTED[i] for i in kept]
    assert [read[QUOTED.index("NA")], read[QUOTED.index("null")]] == ["nan", "nan"]


def test_line_of_a_bad_record_is_where_it_starts_after_multiline_records(tmp_path, monkeypatch):
    path, folder = _split(tmp_path, writer=_write_csv_module)
    with open(path, newline="", encoding="utf-8") as stream:
        rows = list(csv.reader(stream, delimiter="\t"))
    rows[10].append("an extra field")  # data row 9: after two records that span two lines each
    _write_csv_module(path, rows)
    expected_line = 1 + 9 + 2 + 1  # header, nine rows, two extra lines inside them, then this record
    with open(path, "rb") as stream:
        assert stream.read().decode().splitlines()[expected_line - 1].endswith("an extra field")
    message = rf"{path} line {expected_line}: 3 fields, expected 2 like the header"
    for read in (lambda: CsvTextDataset(path, "title", TOKENIZE),
                 lambda: CsvImageTextDataset(path, "filepath", "title", TOKENIZE, PREPROCESS),
                 lambda: csv_captions(path), lambda: samples_from_csv(path)):
        with pytest.raises(CsvFormatError, match=message):
            read()
    with pytest.raises(BenchmarkError, match=message):
        read_caption_csv(path)
    monkeypatch.setattr(open_clip_train.data, "CsvDataset", open_clip_train.data.CsvDataset)
    open_clip_train_patches.use_project_csv_reader()
    with pytest.raises(CsvFormatError, match=message):
        open_clip_train.data.CsvDataset(path, PREPROCESS, "filepath", "title", tokenizer=TOKENIZE)


def test_row_locations_count_lines_inside_quoted_fields(tmp_path):
    path, _ = _split(tmp_path, writer=_write_pandas)
    table = read_csv_table(path, {"--csv-caption-key": "title"})
    with open(path, newline="", encoding="utf-8") as stream:
        reader = csv.reader(stream, delimiter="\t")
        next(reader)
        starts, line = [], reader.line_num + 1
        for _ in reader:
            starts.append(line)
            line = reader.line_num + 1
    assert table.lines == starts and starts[-1] == len(QUOTED) + 1 + 2
    assert table.where(5) == f"{path} line {starts[5]}, data row 5"


def test_a_field_that_opens_a_quote_and_goes_on_is_refused_naming_the_fix(tmp_path):
    # what write_tsv wrote from commit 1fecb9f until the standard reader: captions verbatim; pandas would read the
    # second row as 'Stop he said' and train on it without a word
    path = _rows_file(str(tmp_path), "verbatim.csv", [("filepath", "title"), ("a.png", "plain"),
                                                      ("b.png", '"Stop" he said')])
    assert pd.read_csv(path, sep="\t")["title"].tolist()[1] == "Stop he said"  # the silent misreading refused here
    with pytest.raises(CsvFormatError, match=rf"{path} line 3: .*double quote.*python scripts/requote_csv.py FILE"):
        read_csv_table(path, {"--csv-caption-key": "title"})
    with pytest.raises(CsvFormatError, match=rf"{path} line 3: "):
        CsvTextDataset(path, "title", TOKENIZE)


@pytest.mark.parametrize("lines, bad_line", [
    ([("filepath", "title"), ("a.png", "fine"), ("b.png", '"never closed')], 3),            # at the end of the file
    ([("filepath", "title"), ("a.png", '"never closed'), ("b.png", "the next row")], 2),    # swallowing to the end
])
def test_an_unclosed_quote_is_refused_at_the_record_that_opens_it(tmp_path, lines, bad_line):
    path = _rows_file(str(tmp_path), "unclosed.csv", lines)
    with pytest.raises(CsvFormatError, match=rf"{path} line {bad_line}: .*double quote"):
        read_csv_table(path, {"--csv-caption-key": "title"})


def test_multiline_field_is_accepted_and_counted_unless_it_swallowed_rows(tmp_path, caplog):
    legit = _rows_file(str(tmp_path), "legit.csv", [
        ("filepath", "title"), ("a.jpg", '"first line\nsecond line\twith a tab"'), ("b.jpg", "next")])
    with caplog.at_level(logging.INFO):
        table = read_csv_table(legit, {"--csv-img-key": "filepath", "--csv-caption-key": "title"})
    assert table.columns["title"] == ["first line\nsecond line\twith a tab", "next"] and table.multiline_rows == 1
    assert "1 rows hold a quoted field that spans lines" in caplog.text
    # an opening quote closed two rows later: the rows between are one caption to a CSV parser (pandas agrees),
    # but the continuation line starts with an image path like the file's others: refused, in stage 1 too, which
    # never reads the image column
    swallowed = _rows_file(str(tmp_path), "swallowed.csv", [
        ("filepath", "title"), ("a.jpg", '"an opening quote'), ("b.jpg", 'a row it swallows"'), ("c.jpg", "next")])
    assert len(pd.read_csv(swallowed, sep="\t")) == 2
    message = rf"{swallowed} line 2, data row 0: .*spans lines.*'b.jpg\\ta row it swallows"
    with pytest.raises(CsvFormatError, match=message):
        read_csv_table(swallowed, {"--csv-img-key": "filepath", "--csv-caption-key": "title"})
    with pytest.raises(CsvFormatError, match=message):
        CsvTextDataset(swallowed, "title", TOKENIZE)
    with pytest.raises(CsvFormatError, match=message):
        csv_captions(swallowed)


def test_requote_script_turns_a_verbatim_file_into_standard_csv_with_the_same_text(tmp_path):
    verbatim = ['"Stop" he said', 'He said "hi".', '"Hello"', "plain"]
    path = _rows_file(str(tmp_path), "old.csv", [("filepath", "title")] +
                      [(f"{i}.png", caption) for i, caption in enumerate(verbatim)])
    with pytest.raises(CsvFormatError):
        read_csv_table(path, {"--csv-caption-key": "title"})
    done = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "requote_csv.py"), path],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert read_csv_table(path, {"--csv-caption-key": "title"}).columns["title"] == verbatim
    assert _pandas_captions(path) == verbatim
    with open(path + ".verbatim", encoding="utf-8") as stream:  # the original is kept
        assert stream.read().splitlines()[1] == '0.png\t"Stop" he said'


def test_na_null_and_numbers_stay_text_in_every_column(tmp_path):
    path = _rows_file(str(tmp_path), "na.csv", [("filepath", "title", "detail_position"), ("NA", "null", "007")])
    table = read_csv_table(path, {"--csv-img-key": "filepath", "--csv-caption-key": "title", "x": "detail_position"})
    assert table.columns == {"filepath": ["NA"], "title": ["null"], "detail_position": ["007"]}


def test_comma_separated_file_read_as_tab_separated_names_csv_separator(tmp_path):
    path = _rows_file(str(tmp_path), "comma.csv", [("filepath", "title"), ("x.png", "a caption")], separator=",")
    hint = r"no column 'title'.*set the column with --csv-caption-key; .*comma-separated, pass --csv-separator ','"
    with pytest.raises(CsvColumnError, match=hint):
        CsvTextDataset(path, "title", TOKENIZE)
    with pytest.raises(KeyError):  # still a KeyError, as a missing column always was
        csv_captions(path)
    with pytest.raises(BenchmarkError, match=r"no column 'filepath'.*--csv-img-key.*--csv-separator ','"):
        runner.load_benchmarks(runner.parse_args(["--model", TEACHER, "--csv", f"c={path}"]))
    # and the same file with the separator named, in training and in evaluation (eval takes training's flags)
    assert list(CsvTextDataset(path, "title", TOKENIZE, sep=",").captions) == ["a caption"]
    write_image(str(tmp_path / "x.png"), 0)
    args = runner.parse_args(["--model", TEACHER, "--csv", f"c={path}", "--csv-separator", ",",
                              "--csv-img-key", "filepath", "--csv-caption-key", "title"])
    (item,) = runner.load_benchmarks(args)
    assert item.data.captions == ["a caption"] and item.data.image_paths == [str(tmp_path / "x.png")]


def test_relative_image_paths_start_from_the_image_root_or_the_csv_folder(tmp_path, monkeypatch):
    path, folder = _split(tmp_path, captions=QUOTED[:3])
    monkeypatch.chdir(tmp_path)  # not the CSV's folder: the working directory must not matter
    expected = [str(folder / "images" / f"{i}.png") for i in range(3)]
    assert list(CsvImageTextDataset(path, "filepath", "title", TOKENIZE, PREPROCESS).image_paths) == expected
    assert read_caption_csv(path).image_paths == expected
    assert [s.image_path for s in samples_from_csv(path)] == expected

    # a CSV written relative to another folder (prepare_sharegpt4v.py --relative-paths): that folder is the root
    moved = str(tmp_path / "elsewhere" / "held.csv")
    os.makedirs(os.path.dirname(moved))
    os.replace(path, moved)
    with pytest.raises(FileNotFoundError, match=r"line 2, data row 0: image file not found: .*--csv-image-root"):
        CsvImageTextDataset(moved, "filepath", "title", TOKENIZE, PREPROCESS)
    dataset = CsvImageTextDataset(moved, "filepath", "title", TOKENIZE, PREPROCESS, image_root=str(folder))
    assert list(dataset.image_paths) == expected
    assert read_caption_csv(moved, str(folder)).image_paths == expected
    assert [s.image_path for s in samples_from_csv(moved, image_root=str(folder))] == expected
    args = runner.parse_args(["--model", TEACHER, "--csv", f"held={moved}", "--csv-image-root", str(folder)])
    assert runner.load_benchmarks(args)[0].data.image_paths == expected
    monkeypatch.setattr(open_clip_train.data, "CsvDataset", open_clip_train.data.CsvDataset)
    argv, root = _take_csv_image_root(["--train-data", moved, "--csv-image-root", str(folder), "--epochs", "1"])
    assert argv == ["--train-data", moved, "--epochs", "1"] and root == str(folder)
    open_clip_train_patches.use_project_csv_reader(root)
    dataset = open_clip_train.data.CsvDataset(moved, PREPROCESS, "filepath", "title", tokenizer=TOKENIZE)
    assert list(dataset.image_paths) == expected


def test_open_clip_train_patch_is_checked_at_import(monkeypatch):
    open_clip_train_patches.check_open_clip_train()
    monkeypatch.delattr(open_clip_train.data, "CsvDataset")
    with pytest.raises(ImportError, match=r"open_clip_torch \d+\.\d+.*CsvDataset is gone.*>=3.3,<3.4"):
        open_clip_train_patches.check_open_clip_train()


def test_teacher_cache_built_from_a_verbatim_read_csv_names_both_fixes_and_requoting_restores_it(tmp_path):
    from training_ext.data.keyed_captions import caption_digest
    from training_ext.data.teacher_cache import CacheHeader, TeacherCache, TeacherCacheError, TeacherCacheWriter
    verbatim = ['"Hello," she said.', "plain"]  # what the verbatim reader handed the teacher
    path = _rows_file(str(tmp_path), "old.csv", [("filepath", "title")] +
                      [(f"{i}.png", caption) for i, caption in enumerate(verbatim)])
    header = CacheHeader(teacher="tiny-clip", checkpoint_sha256="0" * 64, tokenizer_context_length=77,
                         embedding_width=2, dataset_type="csv", dataset=path, caption_field="title")
    writer = TeacherCacheWriter(str(tmp_path / "cache"), header)
    writer.append(["row0", "row1"], [caption_digest(c) for c in verbatim], torch.zeros(2, 2), torch.zeros(2, 2))
    writer.finish()
    cache = TeacherCache(str(tmp_path / "cache"))
    # the standard reader refuses the verbatim field, so a user sees the CSV error first; a file that standard CSV
    # reads differently without an error ('"Hello"' alone reads as Hello) meets the cache's digest check instead
    standard = "Hello"
    with pytest.raises(TeacherCacheError, match=r"another caption.*precompute it again.*requote_csv.py FILE.*keep"):
        cache.row("row0", standard)
    subprocess.run([sys.executable, os.path.join(REPO, "scripts", "requote_csv.py"), path], check=True,
                   capture_output=True, cwd=REPO)
    for row, caption in enumerate(csv_captions(path)):
        assert cache.row(caption.key, caption.caption) == row  # the requoted file reads as the cache was built


def test_rows_swallowed_by_a_column_no_one_reads_are_refused_too(tmp_path):
    path = _rows_file(str(tmp_path), "other.csv", [
        ("filepath", "title", "note"), ("a.jpg", "one", '"opens'), ("b.jpg", "two", 'closes"'), ("c.jpg", "three", "")])
    with pytest.raises(CsvFormatError, match=rf"{path} line 2, data row 0: the quoted field of column 'note'"):
        CsvTextDataset(path, "title", TOKENIZE)


@pytest.mark.parametrize("writer", ["csv-module", "pandas", "bom-crlf"])
def test_one_line_records_are_read_from_the_file_and_equal_what_pandas_reads(tmp_path, writer):
    from training_ext.data.csv_datasets import FileFields
    one_line = [c for c in QUOTED if "\n" not in c and "\r" not in c] + ['"Quoted at the start," then more.', ""]
    path, _ = _split(tmp_path, captions=one_line, writer=WRITERS[writer])
    expected = _pandas_captions(path)
    table = read_csv_table(path, {"--csv-caption-key": "title"})
    assert table.record_starts is not None and len(table.record_starts) == len(one_line) + 1
    assert [table.line(row) for row in range(len(table))] == record_lines(path)
    stage1 = CsvTextDataset(path, "title", TOKENIZE)
    assert isinstance(stage1.captions, FileFields)  # 8 bytes a row; the text is read from the file
    kept = [i for i, caption in enumerate(expected) if caption.strip()]  # the empty caption is skipped
    assert list(stage1.row_numbers) == kept and list(stage1.captions) == [clean_caption(expected[i]) for i in kept]
    stage2 = CsvImageTextDataset(path, "filepath", "title", TOKENIZE, PREPROCESS)
    assert list(stage2.captions) == list(stage1.captions)
    assert [stage2.short_caption(i) for i in range(len(stage2))] == [
        first_sentence(clean_caption(expected[i])) for i in kept]


def record_lines(path):
    """The line where each data record starts, by the csv module (independent of the reader under test)."""
    with open(path, newline="", encoding="utf-8-sig") as stream:
        reader = csv.reader(stream, delimiter="\t")
        starts, line = [], 1
        for fields in reader:
            if fields:
                starts.append(line)
            line = reader.line_num + 1
    return starts[1:]


def test_image_existence_check_resolves_names_as_training_reads_them(tmp_path, monkeypatch):
    import numpy as np
    import pyarrow as pa
    from training_ext.common.csv_table import resolve_image_path
    from training_ext.data.csv_datasets import existing_files
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ("base/a.png", "base/sub/b.png", "home/c.png", "elsewhere/d.png"):
        os.makedirs(os.path.dirname(tmp_path / name), exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    names = ["a.png", "sub/b.png", "~/c.png", str(tmp_path / "elsewhere" / "d.png"), "missing.png", "sub/../a.png",
             "sub"]  # a folder is not an image file
    column = pa.chunked_array([pa.array(names, pa.large_string())])
    rows = np.array([6, 0, 1, 2, 3, 4, 5])
    base = str(tmp_path / "base")
    expected = [os.path.isfile(resolve_image_path(names[r], base)) for r in rows]  # the naive, per-path rule
    assert existing_files(column, rows, base, chunk=3).tolist() == expected == [False, True, True, True, True,
                                                                                False, True]


@pytest.mark.parametrize("data", [b"", b"a\n", b"a\nbc", b"a\r\n\r\nbc\n", b"\n\n"])
def test_line_starts_match_a_naive_split(tmp_path, data):
    from training_ext.common.csv_table import line_starts
    path = tmp_path / "f.csv"
    path.write_bytes(data)
    starts, offset = [0], 0
    for line in data.splitlines(keepends=True):  # only \n and \r\n line ends occur here
        offset += len(line)
        starts.append(offset)
    assert line_starts(str(path), chunk=2).tolist() == (starts if starts[-1] == len(data) else starts + [len(data)])


def test_requote_refuses_a_file_a_csv_writer_quoted_instead_of_corrupting_it(tmp_path):
    path = str(tmp_path / "mixed.csv")
    _write_csv_module(path, [("filepath", "title"), ("a.png", 'The sign reads "STOP".')])
    with open(path, "a", encoding="utf-8", newline="") as stream:
        stream.write('b.png\t"Stop" he said.\n')  # one hand-written verbatim row: the reader refuses the file
    with pytest.raises(CsvFormatError, match="requote_csv.py"):
        read_csv_table(path, {"--csv-caption-key": "title"})
    before = open(path, "rb").read()
    done = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "requote_csv.py"), path],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 2 and "line 2" in done.stderr and "written with quoting" in done.stderr
    assert open(path, "rb").read() == before and not os.path.exists(path + ".verbatim")  # nothing touched


def test_training_checks_csvs_before_any_model_is_built_and_parses_them_once(tmp_path, monkeypatch, capsys):
    from training_ext import main_context_finetune_rope, main_distill_rope
    from training_ext.common import csv_table
    path, _ = _split(tmp_path, captions=QUOTED[:4])
    bad = _rows_file(str(tmp_path), "bad.csv", [("filepath", "title"), ("a.png", '"Stop" he said')])
    for entry in (main_distill_rope, main_context_finetune_rope):
        extra = ["--teacher-model", TEACHER] if entry is main_distill_rope else []
        argv = ["--model", STUDENT, *extra, "--train-data", bad, "--dataset-type", "csv", "--logs", str(tmp_path),
                "--name", f"bad-{entry.__name__}", "--device", "cpu", "--precision", "fp32"]
        built = []
        monkeypatch.setattr(open_clip, "create_model_and_transforms", lambda *a, **k: built.append(a))
        with pytest.raises(SystemExit) as stopped:
            entry.parse_args(argv)
        assert stopped.value.code == 2 and not built
        assert f"{bad} line 2: " in capsys.readouterr().err
    # a good file is parsed once: the check's table is the one the dataset then reads
    parses = []
    original = csv_table._read
    monkeypatch.setattr(csv_table, "_read", lambda *a, **k: parses.append(a[0]) or original(*a, **k))
    main_distill_rope.parse_args(["--model", STUDENT, "--teacher-model", TEACHER, "--train-data", path,
                                  "--dataset-type", "csv", "--logs", str(tmp_path), "--name", "good"])
    assert parses == [path]
    assert list(CsvTextDataset(path, "title", TOKENIZE).captions) == [clean_caption(c) for c in QUOTED[:4]]
    assert parses == [path]


def test_training_ext_main_checks_csvs_before_open_clip_train_starts(tmp_path, monkeypatch, capsys):
    import open_clip_train.main
    from training_ext import main as training_main
    bad = _rows_file(str(tmp_path), "bad.csv", [("filepath", "title"), ("a.png", '"Stop" he said')])
    started = []
    monkeypatch.setattr(open_clip_train.main, "main", lambda argv: started.append(argv))
    monkeypatch.setattr(open_clip_train.data, "CsvDataset", open_clip_train.data.CsvDataset)  # restored after
    with pytest.raises(SystemExit) as stopped:
        training_main.main(["--model", TEACHER, "--train-data", bad, "--batch-size", "2", "--logs", str(tmp_path)])
    assert stopped.value.code == 2 and not started and f"{bad} line 2: " in capsys.readouterr().err
