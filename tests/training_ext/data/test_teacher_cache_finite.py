"""A teacher cache never holds NaN or inf: the writer refuses such a batch, and opening a cache that holds one (a
damaged file) names the file, row and sample key, so stage 1 stops before training, not at a non-finite loss."""
import os

import numpy as np
import pytest
import torch

from support.training_helpers import STUDENT, base_args, write_csv
from training_ext import main_distill_rope
from training_ext.data import teacher_cache
from training_ext.data.keyed_captions import caption_digest, csv_captions
from training_ext.data.teacher_cache import CacheHeader, TeacherCache, TeacherCacheError, TeacherCacheWriter

WIDTH = 4


def _header(dataset="train.csv", width=WIDTH):
    return CacheHeader(teacher="some-encoder", checkpoint_sha256="0" * 64, tokenizer_context_length=77,
                       embedding_width=width, dataset_type="csv", dataset=dataset, caption_field="title")


def _cache(path, rows=10, width=WIDTH, dataset="train.csv", keys=None):
    writer = TeacherCacheWriter(str(path), _header(dataset, width))
    keys = keys or [f"row{i}" for i in range(rows)]
    torch.manual_seed(0)
    writer.append(keys, [caption_digest(f"caption {k}") for k in keys], torch.randn(len(keys), width),
                  torch.randn(len(keys), width))
    writer.finish()
    return str(path)


def _poke(path, name, row, value, width=WIDTH):
    array = np.memmap(os.path.join(path, f"{name}.f32"), dtype="<f4", mode="r+")
    array.reshape(-1, width)[row, 1] = value
    array.flush()
    del array


def test_the_writer_refuses_a_batch_holding_nan_and_keeps_the_rows_before_it(tmp_path):
    writer = TeacherCacheWriter(str(tmp_path / "c"), _header())
    writer.append(["row0", "row1"], ["d0", "d1"], torch.ones(2, WIDTH), torch.ones(2, WIDTH))
    short = torch.ones(3, WIDTH)
    short[1, 2] = float("inf")
    short[2, 0] = float("nan")
    with pytest.raises(TeacherCacheError, match=r"the short embedding of sample 'row3' \(caption 'B is b\.'\) "
                                                r"holds NaN or inf \(2 of this batch's 3 samples\).*2 rows before"):
        writer.append(["row2", "row3", "row4"], ["d2", "d3", "d4"], torch.ones(3, WIDTH), short,
                      captions=["A is a.", "B is b.", "C is c."])
    assert writer.rows == 2
    assert os.path.getsize(tmp_path / "c" / "short.f32") == 2 * WIDTH * 4  # nothing of the batch reached the file
    writer.finish()
    assert len(TeacherCache(str(tmp_path / "c"))) == 2


@pytest.mark.parametrize("name, row, value", [("long", 7, np.nan), ("short", 0, np.inf), ("long", 9, -np.inf)])
def test_opening_a_cache_holding_a_non_finite_row_names_file_row_and_key(tmp_path, monkeypatch, name, row, value):
    monkeypatch.setattr(teacher_cache, "FINITE_SCAN_BYTES", 3 * WIDTH * 4)  # 3 rows a read: rows 0, 7, 9 in chunks
    keys = [f"k{i:02d}" for i in range(10)][::-1]  # the index's order, not sorted: row r is keys[r]
    path = _cache(tmp_path / "c", keys=keys)
    TeacherCache(path)  # finite: opens
    _poke(path, name, row, value)
    with pytest.raises(TeacherCacheError) as raised:
        TeacherCache(path)
    assert str(raised.value).startswith(f"{os.path.join(path, name + '.f32')}: row {row} (sample key "
                                        f"{keys[row]!r} of train.csv) holds NaN or inf (1 of 10 rows do)")
    assert f"Remove {path} and precompute" in str(raised.value)


def test_stage1_stops_naming_the_cache_before_training(tmp_path, capsys):
    train = write_csv(str(tmp_path / "train"), rows=6, images=False)
    records = csv_captions(train)
    path = _cache(tmp_path / "cache", width=32, dataset=train, keys=[r.key for r in records])
    # the digests must match the captions for a run to get as far as training: rewrite them
    with open(os.path.join(path, "index.tsv"), "w") as handle:
        handle.writelines(f"{r.key}\t{caption_digest(r.caption)}\n" for r in records)
    _poke(path, "long", 2, np.nan, width=32)
    argv = ["--model", STUDENT] + base_args(str(tmp_path / "logs"), "nan", train, extra=["--teacher-cache", path])
    with pytest.raises(SystemExit):
        main_distill_rope.main(argv)
    err = capsys.readouterr().err
    assert f"long.f32: row 2 (sample key {records[2].key!r}" in err and "non-finite loss" not in err
    assert "Traceback" not in err
