"""One CSV reader and one rule for every reader of open_clip CSVs: training (both stages and training_ext.main),
evaluation (--csv, Long-DCI), teacher-cache precompute and data preparation.

Rule: tab-separated by default, fields never quoted (a caption survives verbatim, quotes included), a malformed row
is named by file and line, relative image paths start from the image root or else from the CSV's folder."""
import argparse
import os

import open_clip
import open_clip_train.data
import pytest
import torch

from support.training_helpers import STUDENT, TEACHER, write_image
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

QUOTED = [
    'He said "Stop" and the car stopped.',                      # balanced quotes: kept
    'An "unclosed quote opens here and the sentence goes on.',  # never closed: must not swallow later rows
] + [f"Plain caption number {i} of the held-out split." for i in range(6)]


def _rows_file(folder, name, lines, separator="\t"):
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    with open(path, "w", encoding="utf-8") as stream:
        stream.write("".join(separator.join(fields) + "\n" for fields in lines))
    return path


def _split(tmp_path, captions=QUOTED, relative=True, image_dir="images"):
    """A tab-separated CSV with real images; image paths relative to the CSV's folder unless relative=False."""
    folder = tmp_path / "split"
    (folder / image_dir).mkdir(parents=True, exist_ok=True)
    rows = [("filepath", "title")]
    for index, caption in enumerate(captions):
        image = folder / image_dir / f"{index}.png"
        write_image(str(image), index)
        rows.append((f"{image_dir}/{index}.png" if relative else str(image), caption))
    return _rows_file(str(folder), "held.csv", rows), folder


def test_every_reader_reads_quoted_captions_verbatim(tmp_path, monkeypatch):
    path, folder = _split(tmp_path)
    assert read_csv_table(path, {"--csv-caption-key": "title"}).columns["title"] == QUOTED

    assert CsvTextDataset(path, "title", TOKENIZE).captions == QUOTED                      # stage 1
    stage2 = CsvImageTextDataset(path, "filepath", "title", TOKENIZE, PREPROCESS)          # stage 2, validation
    assert [row[3] for row in stage2.rows] == QUOTED
    assert [r.caption for r in csv_captions(path)] == QUOTED                               # teacher-cache precompute
    assert [s.caption for s in samples_from_csv(path)] == QUOTED                           # data preparation
    assert read_caption_csv(path).captions == QUOTED                                       # eval --csv / Long-DCI
    assert read_long_dci(path).captions == QUOTED
    args = runner.parse_args(["--model", TEACHER, "--csv", f"held={path}", "--no-progress"])
    (held,) = runner.load_benchmarks(args)
    assert held.data.captions == QUOTED and len(held.data.image_paths) == 8

    # training_ext.main: open_clip_train's get_csv_dataset builds the project's dataset after the patch
    monkeypatch.setattr(open_clip_train.data, "CsvDataset", open_clip_train.data.CsvDataset)  # restored after
    open_clip_train_patches.use_project_csv_reader()
    flags = argparse.Namespace(val_data=path, csv_img_key="filepath", csv_caption_key="title", csv_separator="\t",
                               batch_size=8, workers=0, distributed=False)
    data = open_clip_train.data.get_csv_dataset(flags, PREPROCESS, is_train=False, tokenizer=TOKENIZE)
    assert isinstance(data.dataloader.dataset, open_clip_train_patches.OpenClipTrainCsvDataset)
    image, ids = data.dataloader.dataset[1]
    assert image.shape == (3, 32, 32) and torch.equal(ids, TOKENIZE([QUOTED[1]])[0])


def test_writer_round_trips_verbatim_and_refuses_what_the_rule_cannot_hold(tmp_path):
    path = str(tmp_path / "out.csv")
    assert write_tsv(path, ("filepath", "title"), [("a.png", QUOTED[0]), ("b.png", QUOTED[1])]) == 2
    assert read_csv_table(path, {"--csv-caption-key": "title"}).columns["title"] == QUOTED[:2]
    for bad in ("a caption\twith a tab", "two\nlines"):
        with pytest.raises(ValueError, match=r"row 0 column 'title' holds a tab or line break"):
            write_tsv(path, ("filepath", "title"), [("a.png", bad)])
    assert read_csv_table(path, {"--csv-caption-key": "title"}).columns["title"] == QUOTED[:2]  # atomic: unchanged


def test_malformed_row_is_named_by_file_and_line_in_every_reader(tmp_path, monkeypatch):
    path, folder = _split(tmp_path)
    lines = open(path, encoding="utf-8").read().splitlines()
    lines[3] += "\tan extra field"  # file line 4
    with open(path, "w", encoding="utf-8") as stream:
        stream.write("\n".join(lines) + "\n")
    message = rf"{path} line 4: 3 fields, expected 2 like the header.*never quoted"
    with pytest.raises(CsvFormatError, match=message):
        CsvTextDataset(path, "title", TOKENIZE)
    with pytest.raises(CsvFormatError, match=message):
        CsvImageTextDataset(path, "filepath", "title", TOKENIZE, PREPROCESS)
    with pytest.raises(CsvFormatError, match=message):
        csv_captions(path)
    with pytest.raises(CsvFormatError, match=message):
        samples_from_csv(path)
    with pytest.raises(BenchmarkError, match=message):
        read_caption_csv(path)
    monkeypatch.setattr(open_clip_train.data, "CsvDataset", open_clip_train.data.CsvDataset)
    open_clip_train_patches.use_project_csv_reader()
    with pytest.raises(CsvFormatError, match=message):
        open_clip_train.data.CsvDataset(path, PREPROCESS, "filepath", "title", tokenizer=TOKENIZE)


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
    assert CsvTextDataset(path, "title", TOKENIZE, sep=",").captions == ["a caption"]
    write_image(str(tmp_path / "x.png"), 0)
    args = runner.parse_args(["--model", TEACHER, "--csv", f"c={path}", "--csv-separator", ",",
                              "--csv-img-key", "filepath", "--csv-caption-key", "title"])
    (item,) = runner.load_benchmarks(args)
    assert item.data.captions == ["a caption"] and item.data.image_paths == [str(tmp_path / "x.png")]


def test_relative_image_paths_start_from_the_image_root_or_the_csv_folder(tmp_path, monkeypatch):
    path, folder = _split(tmp_path, captions=QUOTED[:3])
    monkeypatch.chdir(tmp_path)  # not the CSV's folder: the working directory must not matter
    expected = [str(folder / "images" / f"{i}.png") for i in range(3)]
    assert [row[2] for row in CsvImageTextDataset(path, "filepath", "title", TOKENIZE, PREPROCESS).rows] == expected
    assert read_caption_csv(path).image_paths == expected
    assert [s.image_path for s in samples_from_csv(path)] == expected

    # a CSV written relative to another folder (prepare_sharegpt4v.py --relative-paths): that folder is the root
    moved = str(tmp_path / "elsewhere" / "held.csv")
    os.makedirs(os.path.dirname(moved))
    os.replace(path, moved)
    with pytest.raises(FileNotFoundError, match=r"line 2, data row 0: image file not found: .*--csv-image-root"):
        CsvImageTextDataset(moved, "filepath", "title", TOKENIZE, PREPROCESS)
    rows = CsvImageTextDataset(moved, "filepath", "title", TOKENIZE, PREPROCESS, image_root=str(folder)).rows
    assert [row[2] for row in rows] == expected
    assert read_caption_csv(moved, str(folder)).image_paths == expected
    assert [s.image_path for s in samples_from_csv(moved, image_root=str(folder))] == expected
    args = runner.parse_args(["--model", TEACHER, "--csv", f"held={moved}", "--csv-image-root", str(folder)])
    assert runner.load_benchmarks(args)[0].data.image_paths == expected
    monkeypatch.setattr(open_clip_train.data, "CsvDataset", open_clip_train.data.CsvDataset)
    argv, root = _take_csv_image_root(["--train-data", moved, "--csv-image-root", str(folder), "--epochs", "1"])
    assert argv == ["--train-data", moved, "--epochs", "1"] and root == str(folder)
    open_clip_train_patches.use_project_csv_reader(root)
    dataset = open_clip_train.data.CsvDataset(moved, PREPROCESS, "filepath", "title", tokenizer=TOKENIZE)
    assert [row[2] for row in dataset.rows] == expected


def test_open_clip_train_patch_is_checked_at_import(monkeypatch):
    open_clip_train_patches.check_open_clip_train()
    monkeypatch.delattr(open_clip_train.data, "CsvDataset")
    with pytest.raises(ImportError, match=r"open_clip_torch \d+\.\d+.*CsvDataset is gone.*>=3.3,<3.4"):
        open_clip_train_patches.check_open_clip_train()
