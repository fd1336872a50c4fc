"""Training data: CSV and webdataset with short captions, missing / corrupt images, text-only stage-1 reads."""
import os

import open_clip
import pytest
import torch
from PIL import Image

from support.shard_fixtures import jpeg_bytes, write_shard
from support.training_helpers import STUDENT, TEACHER, long_caption, write_csv
from training_ext.common.captions import first_sentence
from training_ext.data.loaders import CsvImageTextDataset, get_image_text_data, get_text_data
from training_ext import main_context_finetune_rope, main_distill_rope

TOKENIZE = open_clip.get_tokenizer(STUDENT)
_, _, PREPROCESS = open_clip.create_model_and_transforms(TEACHER)


def _args(stage, data, kind, extra=()):
    flags = ["--model", STUDENT, "--train-data", data, "--dataset-type", kind, "--batch-size", "2", "--workers", "0",
             "--device", "cpu"]
    if stage == "distill":
        flags += ["--teacher-model", TEACHER]
    entry = main_distill_rope if stage == "distill" else main_context_finetune_rope
    args = entry.parse_args(flags + list(extra))
    args.world_size, args.rank, args.distributed = 1, 0, False
    return args


def test_csv_short_caption_column_or_first_sentence(tmp_path):
    with_column = write_csv(str(tmp_path / "a"), rows=3, short_column=True)
    without = write_csv(str(tmp_path / "b"), rows=3)
    given = CsvImageTextDataset(with_column, "filepath", "title", TOKENIZE, PREPROCESS, short_caption_key="short")
    derived = CsvImageTextDataset(without, "filepath", "title", TOKENIZE, PREPROCESS)
    image, long_ids, short_ids = given[1]
    assert image.shape == (3, 32, 32)
    assert torch.equal(long_ids, TOKENIZE([long_caption(1)])[0])
    assert torch.equal(short_ids, TOKENIZE(["short caption 1"])[0])
    assert torch.equal(derived[2][2], TOKENIZE([first_sentence(long_caption(2))])[0])
    assert first_sentence(long_caption(2)) == f"A picture of item 2 with a {long_caption(2).split(' with a ')[1].split('.')[0]}."


def test_csv_missing_image_names_row_and_path_unless_skipped(tmp_path):
    path = write_csv(str(tmp_path), rows=5)
    missing = str(tmp_path / "images" / "3.png")
    os.remove(missing)
    with pytest.raises(FileNotFoundError, match=rf"row 3: image file not found: {missing}"):
        CsvImageTextDataset(path, "filepath", "title", TOKENIZE, PREPROCESS)
    kept = CsvImageTextDataset(path, "filepath", "title", TOKENIZE, PREPROCESS, skip_missing=True)
    assert len(kept) == 4 and list(kept.row_numbers) == [0, 1, 2, 4]


def test_csv_bad_input_is_named(tmp_path):
    path = write_csv(str(tmp_path), rows=3)
    with open(tmp_path / "images" / "1.png", "wb") as stream:
        stream.write(b"not an image")
    dataset = CsvImageTextDataset(path, "filepath", "title", TOKENIZE, PREPROCESS)
    assert dataset[1] is None  # an undecodable image is skipped (dropped by the loader's collate) and counted
    assert dataset.skips.counts() == {"image cannot be decoded": 1}
    with pytest.raises(KeyError, match=r"no column 'caption'.*--csv-caption-key"):
        CsvImageTextDataset(path, "filepath", "caption", TOKENIZE, PREPROCESS)
    empty = tmp_path / "empty.csv"
    empty.write_text("filepath\ttitle\nx.png\t \n")
    with pytest.raises(ValueError, match=r"no row has a caption in column 'title'"):
        CsvImageTextDataset(str(empty), "filepath", "title", TOKENIZE, PREPROCESS)


def test_stage1_csv_reads_captions_only(tmp_path, monkeypatch):
    path = write_csv(str(tmp_path), rows=6, images=False)
    monkeypatch.setattr(Image, "open", lambda *a, **k: pytest.fail("stage 1 opened an image"))
    data = get_text_data(_args("distill", path, "csv"), TOKENIZE)
    batches = list(data.dataloader)
    assert data.dataloader.num_batches == 3 and len(batches) == 3
    seen = sorted(tuple(row.tolist()) for (ids,) in batches for row in ids)
    assert seen == sorted(tuple(TOKENIZE([long_caption(i)])[0].tolist()) for i in range(6))


def _shards(tmp_path):
    """Two shards, 8 samples: sample 2 has a corrupt jpg, sample 5 no image; even samples carry short.txt."""
    samples = []
    for index in range(8):
        files = {"txt": long_caption(index).encode()}
        if index == 2:
            files["jpg"] = b"\xff\xd8 corrupt"
        elif index != 5:
            files["jpg"] = jpeg_bytes(index)
        if index % 2 == 0:
            files["short.txt"] = f"short {index}".encode()
        samples.append((f"{index:04d}", files))
    write_shard(tmp_path / "shard-0.tar", samples[:4])
    write_shard(tmp_path / "shard-1.tar", samples[4:])
    return str(tmp_path / "shard-{0..1}.tar")


def test_webdataset_skips_and_counts_bad_images_and_reads_short_field(tmp_path):
    shards = _shards(tmp_path)
    args = _args("finetune", shards, "webdataset", ["--train-num-samples", "6", "--wds-short-caption-key", "short.txt"])
    data = get_image_text_data(args, TOKENIZE, PREPROCESS, is_train=True)
    got = {}
    for images, long_ids, short_ids in data.dataloader:
        assert images.shape[1:] == (3, 32, 32)
        for long, short in zip(long_ids, short_ids):
            got[tuple(long.tolist())] = short
    assert data.skipped.get() == 2
    for index in (0, 1, 3, 4, 6, 7):
        short = got[tuple(TOKENIZE([long_caption(index)])[0].tolist())]
        want = f"short {index}" if index % 2 == 0 else first_sentence(long_caption(index))
        assert torch.equal(short, TOKENIZE([want])[0])
    assert len(got) == 6


def test_webdataset_stage1_decodes_no_image(tmp_path, monkeypatch):
    shards = _shards(tmp_path)
    monkeypatch.setattr(Image, "open", lambda *a, **k: pytest.fail("stage 1 decoded an image"))
    data = get_text_data(_args("distill", shards, "webdataset", ["--train-num-samples", "8"]), TOKENIZE)
    rows = {tuple(row.tolist()) for (ids,) in data.dataloader for row in ids}
    assert rows == {tuple(TOKENIZE([long_caption(i)])[0].tolist()) for i in range(8)}  # bad images do not matter


def test_synthetic_smoke_data_has_distinct_captions(tmp_path):
    data = get_image_text_data(_args("finetune", None, "synthetic", ["--train-num-samples", "4"]), TOKENIZE,
                               PREPROCESS, is_train=True, image_size=32)
    images, long_ids, short_ids = next(iter(data.dataloader))
    assert images.shape == (2, 3, 32, 32) and not torch.equal(long_ids[0], long_ids[1])
    assert (short_ids != 0).sum() < (long_ids != 0).sum()
