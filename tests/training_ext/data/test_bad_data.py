"""Bad data never fails silently, and each kind gets one policy across every source (CSV, webdataset, folder):

- shards whose samples lack the members training reads stop the run at once, naming the shard and the members;
  a data source that skips every sample raises instead of looping; an epoch that yields nothing is an error;
- a text file that is not UTF-8 is named with its line and byte (an error), or skipped and counted (a caption);
- an image that cannot be decoded is skipped and counted, the first few named, in every source;
- an empty or blank caption is skipped and counted, the first few named, in every source.
"""
import logging
import os

import open_clip
import pytest
import torch

from support.shard_fixtures import jpeg_bytes, truncated_jpeg, write_shard
from support.training_helpers import STUDENT, TEACHER, long_caption, write_csv, write_image
from training_ext import main_context_finetune_rope, main_distill_rope
from training_ext.common.text_files import TextDecodeError, read_text
from training_ext.data.keyed_captions import csv_captions, folder_captions, webdataset_captions
from training_ext.data.loaders import CsvImageTextDataset, CsvTextDataset, get_image_text_data, get_text_data
from training_ext.data.shard_checks import EmptyDataError, ShardFormatError
from training_ext.data.teacher_cache import TeacherCacheError, read_header
from training_ext.engine.loop import usable_micro_batches
from training_ext.eval.datasets import BenchmarkError, read_caption_csv, read_sharegpt4v_1k, read_urban1k
from training_ext.prep.dci import read_annotation
from training_ext.prep.sharegpt4v import load_json_list
from training_ext.prep.sources import samples_from_coco, samples_from_csv, samples_from_folder
from training_ext.common.folder_pairs import pair_folder

TOKENIZE = open_clip.get_tokenizer(STUDENT)
_, _, PREPROCESS = open_clip.create_model_and_transforms(TEACHER)


def _args(stage, data, kind, extra=(), workers=0):
    flags = ["--model", STUDENT, "--train-data", data, "--dataset-type", kind, "--batch-size", "2",
             "--workers", str(workers), "--device", "cpu"]
    entry = main_distill_rope if stage == "distill" else main_context_finetune_rope
    if stage == "distill":
        flags += ["--teacher-model", TEACHER]
    args = entry.parse_args(flags + list(extra))
    args.world_size, args.rank, args.distributed = 1, 0, False
    return args


def _data(stage, args):
    if stage == "distill":
        return get_text_data(args, TOKENIZE)
    return get_image_text_data(args, TOKENIZE, PREPROCESS, is_train=True)


def _seen_captions(data) -> set:
    """The long-caption ids of every sample one epoch gives (stage 1: (ids,), stage 2: (images, ids, short ids))."""
    seen = set()
    for batch in data.dataloader:
        if batch is not None:
            seen.update(tuple(ids.tolist()) for ids in (batch[0] if len(batch) == 1 else batch[1]))
    return seen


def _ids(caption):
    return tuple(TOKENIZE([caption])[0].tolist())


# ------------------------------------------------------------------------------------------ case 1: shards

LAYOUTS = {"class labels": {"jpg": jpeg_bytes(0), "cls": b"3"},
           "input/output pairs": {"input.jpg": jpeg_bytes(1), "outputs.txt": b"a caption"}}


def _shards_of(tmp_path, members: dict, count: int = 8, name: str = "bad"):
    samples = [(f"{i:04d}", dict(members)) for i in range(count)]
    write_shard(tmp_path / f"{name}-0.tar", samples[: count // 2])
    write_shard(tmp_path / f"{name}-1.tar", samples[count // 2:])
    return str(tmp_path / f"{name}-{{0..1}}.tar")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("stage", ["distill", "finetune"])
def test_shards_without_captions_stop_at_once_naming_shard_and_members(tmp_path, stage, layout):
    shards = _shards_of(tmp_path, LAYOUTS[layout])
    found = ", ".join(sorted(LAYOUTS[layout]))
    message = rf"bad-[01]\.tar: none of its 4 samples has 'txt'.*members found: {found}"
    data = _data(stage, _args(stage, shards, "webdataset", ["--train-num-samples", "8"], workers=1))
    with pytest.raises(ShardFormatError, match=message):
        next(iter(data.dataloader))
    with pytest.raises(ShardFormatError, match=message):  # the teacher-cache precompute reads shards alike
        list(webdataset_captions(shards))


@pytest.mark.timeout(300)
def test_both_stages_stop_on_shards_without_captions_instead_of_hanging(tmp_path):
    shards = _shards_of(tmp_path, LAYOUTS["class labels"])
    common = ["--model", STUDENT, "--train-data", shards, "--dataset-type", "webdataset", "--train-num-samples", "8",
              "--batch-size", "2", "--workers", "1", "--epochs", "1", "--device", "cpu", "--precision", "fp32",
              "--logs", str(tmp_path / "logs")]
    stage1 = main_distill_rope.parse_args(common + ["--name", "s1", "--teacher-model", TEACHER])
    with pytest.raises(ShardFormatError, match=r"members found: cls, jpg"):
        main_distill_rope.run(stage1)
    stage2 = main_context_finetune_rope.parse_args(common + ["--name", "s2"])
    with pytest.raises(ShardFormatError, match=r"has 'txt' .*and an image .*members found: cls, jpg"):
        main_context_finetune_rope.run(stage2)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("resampled", [False, True])
def test_a_stream_that_skips_every_sample_raises_instead_of_looping(tmp_path, resampled):
    shards = _shards_of(tmp_path, {"jpg": b"\xff\xd8 not a jpeg", "txt": b"a caption"})
    extra = ["--train-num-samples", "8"] + (["--dataset-resampled"] if resampled else [])
    data = _data("finetune", _args("finetune", shards, "webdataset", extra))
    with pytest.raises(EmptyDataError, match=r"bad-\{0\.\.1\}\.tar: .*without a single batch|gave no batch"):
        next(iter(data.dataloader))
    assert data.skipped.counts()["image cannot be decoded"] > 0


def test_an_epoch_with_no_readable_sample_is_an_error(tmp_path):
    train = write_csv(str(tmp_path / "train"), rows=4)
    for index in range(4):
        (tmp_path / "train" / "images" / f"{index}.png").write_bytes(truncated_jpeg(index))
    argv = ["--model", STUDENT, "--train-data", train, "--dataset-type", "csv", "--batch-size", "2", "--workers", "0",
            "--epochs", "1", "--device", "cpu", "--precision", "fp32", "--logs", str(tmp_path / "logs"),
            "--name", "empty"]
    with pytest.raises(EmptyDataError, match=r"epoch 0 trained no step.*image cannot be decoded: 4"):
        main_context_finetune_rope.run(main_context_finetune_rope.parse_args(argv))
    assert not os.path.exists(tmp_path / "logs" / "empty" / "checkpoints" / "epoch_1.pt")


# ----------------------------------------------------------------------------------- case 5: not UTF-8

def _with_bad_byte(path, line: int):
    """Replace the first character of file line `line` (from 1) by a byte that is not UTF-8."""
    data = open(path, "rb").read().split(b"\n")
    data[line - 1] = b"\xff" + data[line - 1][1:]
    open(path, "wb").write(b"\n".join(data))
    return str(path)


def test_undecodable_text_files_are_named_with_line_and_byte(tmp_path):
    path = _with_bad_byte(write_csv(str(tmp_path / "csv"), rows=4), line=3)
    offset = sum(len(line) + 1 for line in open(path, "rb").read().split(b"\n")[:2])
    where = rf"{path}: not valid UTF-8 at byte {offset} \(line 3\)"
    for read in (lambda: CsvTextDataset(path, "title", TOKENIZE),
                 lambda: CsvImageTextDataset(path, "filepath", "title", TOKENIZE, PREPROCESS),
                 lambda: csv_captions(path), lambda: samples_from_csv(path)):
        with pytest.raises(TextDecodeError, match=where):
            read()
    with pytest.raises(BenchmarkError, match=where):
        read_caption_csv(path)

    json_file = tmp_path / "entries.json"
    json_file.write_bytes(b'[{"image": "a.jpg", "caption": "caf\xe9"}]')
    json_where = rf"{json_file}: not valid UTF-8 at byte 35 \(line 1\)"
    for read in (lambda: load_json_list(str(json_file)), lambda: read_annotation(str(json_file)),
                 lambda: samples_from_coco(str(json_file), str(tmp_path))):
        with pytest.raises(TextDecodeError, match=json_where):
            read()
    (tmp_path / "images").mkdir()
    with pytest.raises(BenchmarkError, match=json_where):
        read_sharegpt4v_1k(str(json_file), str(tmp_path / "images"), count=1)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "header.json").write_bytes(b'{"teacher": "\xff"}')
    with pytest.raises(TeacherCacheError, match=rf"header.json: not valid UTF-8 at byte 13"):
        read_header(str(cache))

    urban = tmp_path / "Urban1k"
    (urban / "caption").mkdir(parents=True)
    (urban / "image").mkdir()
    write_image(str(urban / "image" / "1.jpg"), 1)
    (urban / "caption" / "1.txt").write_bytes(b"A caf\xe9 on a street.\n")
    with pytest.raises(BenchmarkError, match=r"1\.txt: not valid UTF-8 at byte 5 \(line 1\)"):
        read_urban1k(str(urban))
    with pytest.raises(TextDecodeError, match=r"1\.txt: not valid UTF-8"):
        read_text(str(urban / "caption" / "1.txt"))


def _caption_folder(tmp_path):
    root = tmp_path / "folder"
    root.mkdir()
    for name, payload in (("good", b"A good caption.\nA second line."), ("latin1", b"Un caf\xe9 en terrasse."),
                          ("blank", b"  \n\n"), ("other", b"Another caption.")):
        write_image(str(root / f"{name}.png"), len(name))
        (root / f"{name}.txt").write_bytes(payload)
    return root


def test_undecodable_and_empty_caption_files_are_skipped_counted_and_named_in_folders(tmp_path, caplog):
    root = _caption_folder(tmp_path)
    caplog.set_level(logging.WARNING)
    args = _args("finetune", str(root), "folder", ["--folder-caption-line", "first"])
    data = _data("finetune", args)
    assert len(data.dataloader.dataset) == 2
    log = caplog.text
    assert "1 caption files that are not UTF-8, their images skipped" in log and "latin1.txt" in log
    assert "not valid UTF-8 at byte 6 (line 1)" in log
    assert "1 empty caption files, their images skipped" in log and "blank.txt" in log
    assert {r.key.split("#")[0] for r in folder_captions(str(root))} == {"good", "other"}  # the cache reads alike
    with pytest.raises(TextDecodeError, match=r"latin1\.txt: not valid UTF-8 at byte 6"):  # data prep: an error
        samples_from_folder(pair_folder(str(root)))


# --------------------------------------------------------------------------- cases 8, 9: skip and count

def test_empty_captions_are_skipped_and_counted_in_every_source(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    captions = [long_caption(i) for i in range(8)]
    captions[2], captions[5] = "", "   "
    # CSV
    csv_path = write_csv(str(tmp_path / "csv"), rows=8)
    lines = open(csv_path).read().splitlines()
    for row in (2, 5):
        lines[row + 1] = lines[row + 1].split("\t")[0] + "\t" + captions[row]
    open(csv_path, "w").write("\n".join(lines) + "\n")
    # webdataset
    samples = [(f"{i:04d}", {"jpg": jpeg_bytes(i), "txt": captions[i].encode()}) for i in range(8)]
    write_shard(tmp_path / "wds-0.tar", samples[:4])
    write_shard(tmp_path / "wds-1.tar", samples[4:])
    shards = str(tmp_path / "wds-{0..1}.tar")
    # folder
    root = tmp_path / "folder"
    root.mkdir()
    for i, caption in enumerate(captions):
        write_image(str(root / f"{i}.png"), i)
        (root / f"{i}.txt").write_text(caption)

    want = {_ids(captions[i]) for i in (0, 1, 3, 4, 6, 7)}
    for stage in ("distill", "finetune"):
        for kind, path, extra in (("csv", csv_path, ()), ("webdataset", shards, ["--train-num-samples", "6"]),
                                  ("folder", str(root), ["--folder-caption-line", "first"])):
            data = _data(stage, _args(stage, path, kind, extra))
            assert _seen_captions(data) == want, (stage, kind)
            counts = data.skipped.counts()
            if kind == "folder":  # a caption file without a caption: reported by the folder reader
                assert "2 empty caption files, their images skipped" in caplog.text
            else:
                assert counts == {"empty caption": 2}, (stage, kind, counts)
    assert f"{csv_path} line 4, data row 2 column 'title': empty caption" in caplog.text
    assert "wds-0.tar sample 0002: empty caption" in caplog.text
    # the teacher-cache precompute keeps the same samples, under the keys training looks up
    assert [r.key for r in csv_captions(csv_path)] == [f"row{i}" for i in (0, 1, 3, 4, 6, 7)]
    assert [r.key for r in webdataset_captions(shards)] == [f"{i:04d}" for i in (0, 1, 3, 4, 6, 7)]


def test_undecodable_shard_captions_are_skipped_and_counted(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    samples = [(f"{i:04d}", {"jpg": jpeg_bytes(i), "txt": long_caption(i).encode()}) for i in range(4)]
    samples[1][1]["txt"] = b"caf\xe9"
    shards = write_shard(tmp_path / "mixed-0.tar", samples)
    data = _data("distill", _args("distill", shards, "webdataset", ["--train-num-samples", "2"]))
    assert _seen_captions(data) <= {_ids(long_caption(i)) for i in (0, 2, 3)}
    assert data.skipped.counts() == {"caption not UTF-8": 1}
    assert "mixed-0.tar sample 0001 .txt: not valid UTF-8 at byte 3" in caplog.text


def test_corrupt_images_are_skipped_and_counted_in_every_source(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    csv_path = write_csv(str(tmp_path / "csv"), rows=8)
    bad = tmp_path / "csv" / "images" / "3.png"
    bad.write_bytes(truncated_jpeg(3))
    root = tmp_path / "folder"
    root.mkdir()
    for i in range(8):
        write_image(str(root / f"{i}.png"), i)
        (root / f"{i}.txt").write_text(long_caption(i))
    (root / "3.png").write_bytes(truncated_jpeg(3))
    samples = [(f"{i:04d}", {"jpg": truncated_jpeg(i) if i == 3 else jpeg_bytes(i),
                             "txt": long_caption(i).encode()}) for i in range(8)]
    write_shard(tmp_path / "wds-0.tar", samples[:4])
    write_shard(tmp_path / "wds-1.tar", samples[4:])

    want = {_ids(long_caption(i)) for i in range(8) if i != 3}
    for kind, path, extra in (("csv", csv_path, ["--csv-skip-missing-images"]), ("csv", csv_path, []),
                              ("folder", str(root), ["--folder-caption-line", "first"]),
                              ("webdataset", str(tmp_path / "wds-{0..1}.tar"), ["--train-num-samples", "6"])):
        data = _data("finetune", _args("finetune", path, kind, extra))
        batches = list(data.dataloader)
        assert _seen_captions(data) == want if kind != "webdataset" else _seen_captions(data) <= want, kind
        assert data.skipped.counts()["image cannot be decoded"] >= 1, kind
        if kind != "webdataset":  # map-style: the batch keeps its place in the order, one sample short
            assert sorted(len(batch[0]) for batch in batches) == [1, 2, 2, 2], kind
    assert f"{csv_path} line 5, data row 3: {bad}: image cannot be decoded" in caplog.text
    assert "wds-0.tar sample 0003 .jpg: image cannot be decoded" in caplog.text


def test_processes_train_micro_batches_of_equal_length(monkeypatch):
    class Args:
        distributed, device = True, "cpu"

    def all_reduce_with_a_peer_one_short(tensor, op):  # the other process lost one sample of the 2nd micro-batch
        tensor.copy_(torch.minimum(tensor, torch.tensor([3, 2, 3])))

    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce_with_a_peer_one_short)
    full = (torch.zeros(3, 4), torch.zeros(3, 7))
    usable, cut = usable_micro_batches([full, full, None], Args)
    assert [len(batch[0]) for batch in usable] == [3, 2] and cut == 1
    assert all(len(part) == len(batch[0]) for batch in usable for part in batch)
    Args.distributed = False
    usable, cut = usable_micro_batches([full, None, (torch.zeros(1, 4), torch.zeros(1, 7))], Args)
    assert [len(batch[0]) for batch in usable] == [3, 1] and cut == 0


# the demo reads back only files it wrote itself a step earlier (it is not part of this change); text_files is the
# helper itself, whose every text read turns a decoding failure into a TextDecodeError with the line and byte
_NOT_YET_ROUTED = {"training_ext/demo/pipeline.py", "training_ext/common/text_files.py"}


def _text_reads(path):
    """(line, call) of every text read in a source file that bypasses training_ext.common.text_files: pandas'
    read_csv, json.load, Path.read_text and open() in a text read mode."""
    import ast
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        function = node.func
        name = getattr(function, "attr", getattr(function, "id", ""))
        owner = getattr(getattr(function, "value", None), "id", "")
        bypass = name == "read_csv" or (owner == "json" and name == "load") or (
            isinstance(function, ast.Attribute) and name == "read_text")
        if isinstance(function, ast.Name) and name == "open":
            mode = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "mode"),
                                                                 ast.Constant("r"))
            bypass = isinstance(mode, ast.Constant) and not any(flag in mode.value for flag in "bwax")
        if bypass:
            yield node.lineno, ast.unparse(node)


def test_every_text_read_goes_through_the_text_files_helper():
    from pathlib import Path
    root = Path(__file__).resolve().parents[3]
    found = [f"{path.relative_to(root)}:{line}: {call}"
             for folder in ("training_ext", "scripts") for path in sorted((root / folder).rglob("*.py"))
             if str(path.relative_to(root)) not in _NOT_YET_ROUTED for line, call in _text_reads(path)]
    assert not found, "read text through training_ext.common.text_files (read_text, text_lines, read_json):\n" + \
        "\n".join(found)
