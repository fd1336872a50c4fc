"""Bad data never fails silently, and each kind gets one policy across every source (CSV, webdataset, folder):

- shards whose samples lack the members training reads stop the run at once, naming the shard and the members;
  a data source that skips every sample raises instead of looping; an epoch that yields nothing is an error;
- a contrastive step that unreadable samples leave with fewer than two pairs takes no optimizer step (counted);
- a caption that holds no text once tokenized is skipped and counted like an empty one, the cache alike;
- a text file that is not UTF-8 is named with its line and byte (an error), or skipped and counted (a caption);
- an image that cannot be decoded is skipped and counted, the first few named, in every source;
- an empty or blank caption is skipped and counted, the first few named, in every source.
"""
import csv
import logging
import os
import re

import open_clip
import open_clip_train.params as open_clip_train_params
import pytest
import torch
from open_clip.tokenizer import HFTokenizer
from open_clip_train.scheduler import cosine_lr

from support.data_prep_fixtures import load_script
from support.shard_fixtures import jpeg_bytes, truncated_jpeg, write_shard
from support.training_helpers import STUDENT, TEACHER, base_args, long_caption, write_csv, write_image
from training_ext import main as train_main, main_context_finetune_rope, main_distill_rope
from training_ext.common.captions import first_sentence, short_caption_for
from training_ext.common.text_files import TextDecodeError, read_text
from training_ext.data.folder import FolderDataset
from training_ext.data.keyed_captions import csv_captions, folder_captions, webdataset_captions
from training_ext.data.loaders import CsvImageTextDataset, CsvTextDataset, get_image_text_data, get_text_data
from training_ext.data.shard_checks import EmptyDataError, ShardFormatError
from training_ext.data.skips import TextCheck
from training_ext.data.teacher_cache import TeacherCache, TeacherCacheError, read_header
from training_ext.engine.loop import step_pairs, usable_micro_batches
from training_ext.eval.datasets import BenchmarkError, read_caption_csv, read_sharegpt4v_1k, read_urban1k
from training_ext.prep.dci import read_annotation
from training_ext.prep.sharegpt4v import load_json_list
from training_ext.prep.sources import samples_from_coco, samples_from_csv, samples_from_folder
from training_ext.stages.cached_targets import CsvCachedTargets, FolderCachedTargets
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


# ------------------------------------------------------------------------- steps with fewer than two pairs

def _epoch_order(rows: int, seed: int = 0, epoch: int = 0) -> list:
    """The test's own reading of an epoch's sample order: DistributedSampler's permutation seeded seed + epoch."""
    generator = torch.Generator()
    generator.manual_seed(seed + epoch)
    return torch.randperm(rows, generator=generator).tolist()


def _stage2_with_unreadable(tmp_path, name, unreadable):
    """Stage 2 on an 8-row CSV at batch 2 (4 steps) whose rows ``unreadable`` hold truncated images."""
    train = write_csv(str(tmp_path / name), rows=8)
    for row in unreadable:
        (tmp_path / name / "images" / f"{row}.png").write_bytes(truncated_jpeg(row))
    argv = base_args(str(tmp_path / "logs"), name, train, batch_size=2, extra=["--model", STUDENT])
    return main_context_finetune_rope.run(main_context_finetune_rope.parse_args(argv))


def test_a_contrastive_step_left_with_one_pair_takes_no_optimizer_step(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    state = _stage2_with_unreadable(tmp_path, "one-pair", _epoch_order(8)[:1])  # the first step keeps 1 pair of 2
    # the optimizer's own count: 3 updates for 4 steps
    assert {int(s["step"]) for s in state.optimizer.state.values()} == {3}
    assert state.step == 3 and state.skipped_steps == 1
    assert state.samples_seen == 8  # the skipped step's samples count as trained: a resume continues after them
    # the lr schedule moved on past the skipped step: the last step ran at the cosine schedule's step 3 of 4
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
    cosine_lr(probe, 1e-3, 1, 4)(3)
    assert state.optimizer.param_groups[0]["lr"] == probe.param_groups[0]["lr"]
    assert "step at sample 0 of the epoch skipped, no optimizer step: only 1 of its 2 samples" in caplog.text
    log = (tmp_path / "logs" / "one-pair" / "out.log").read_text()
    losses = [float(value) for value in re.findall(r"Long_loss: ([0-9.]+)", log)]
    assert len(losses) == 3 and min(losses) > 0.1 and "Skipped steps: 1" in log
    saved = torch.load(state.last_checkpoint, map_location="cpu", weights_only=True)
    assert saved["step"] == 3 and saved["data_position"]["samples_seen"] == 8

    # 7 of 8 images unreadable: no step has two pairs, so nothing trains and the run says so
    with pytest.raises(EmptyDataError, match=r"epoch 0 trained no step: no step had 2 readable samples.*"
                                             r"image cannot be decoded: 7"):
        _stage2_with_unreadable(tmp_path, "seven-of-eight", range(1, 8))


def test_the_pairs_of_a_step_are_counted_across_processes(monkeypatch):
    class Args:
        distributed, device, world_size = True, "cpu", 2

    peer = torch.tensor([1])
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda tensor, op: tensor.copy_(torch.minimum(tensor, peer)))
    one_readable = (torch.zeros(1, 4), torch.zeros(1, 7))  # this process lost one sample of its batch of 2
    usable, _ = usable_micro_batches([one_readable], Args)
    assert step_pairs(usable, Args) == 2  # one pair here and one on the peer: the gathered loss sees two
    peer.fill_(0)  # the peer lost both of its samples: every process is cut to none
    usable, _ = usable_micro_batches([one_readable], Args)
    assert step_pairs(usable, Args) == 0
    Args.distributed = False
    assert step_pairs(usable_micro_batches([one_readable, one_readable], Args)[0], Args) == 2


def test_distillation_trains_on_single_pairs(tmp_path):
    """Stage 1's losses (cosine, mse, l2) are per-caption means: a step of one caption is a valid step."""
    train = write_csv(str(tmp_path / "train"), rows=4, images=False)
    argv = ["--model", STUDENT, "--teacher-model", TEACHER] + base_args(str(tmp_path / "logs"), "s1", train,
                                                                         batch_size=1)
    state = main_distill_rope.run(main_distill_rope.parse_args(argv))
    assert state.step == 4 and state.skipped_steps == 0
    assert {int(s["step"]) for s in state.optimizer.state.values()} == {4}


def test_open_clip_trains_main_refuses_a_contrastive_loss_over_one_pair(tmp_path, capsys, caplog):
    train = write_csv(str(tmp_path / "train"), rows=4)
    argv = ["--model", TEACHER, "--train-data", train, "--dataset-type", "csv", "--csv-img-key", "filepath",
            "--csv-caption-key", "title", "--batch-size", "1", "--logs", str(tmp_path / "logs"), "--device", "cpu"]
    with pytest.raises(SystemExit) as stop:
        train_main.main(argv)
    assert stop.value.code == 2 and not (tmp_path / "logs").exists()  # before open_clip_train set anything up
    error = capsys.readouterr().err
    assert ("--batch-size 1 x --accum-freq 1 x 1 process(es) gives 1 image-caption pair per step: the CLIP loss over "
            "one pair is a 1x1 logit matrix, a loss of exactly 0") in error and "Traceback" not in error
    args = open_clip_train_params.parse_args(argv)
    refusals = []
    train_main.check_contrastive_pairs(args, 2, refusals.append)  # two processes: two pairs per step
    args.siglip = True
    train_main.check_contrastive_pairs(args, 1, refusals.append)
    assert len(refusals) == 1 and "no negative pair" in refusals[0]
    caplog.set_level(logging.WARNING)
    args.model, args.siglip = "coca_ViT-B-32", False  # the caption loss still trains: a warning, no refusal
    train_main.check_contrastive_pairs(args, 1, refusals.append)
    assert len(refusals) == 1 and "CoCa's contrastive term over one pair is exactly 0" in caplog.text


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


# ----------------------------------------------------------------- captions that hold no text once tokenized

# Each of these is cleaned to something non-empty, yet the tiny configs' tokenizer writes nothing of its own before
# the first end id: a tower pooling there reads the empty caption. (A leading BOM of a file or member is dropped
# when the text is decoded, so the BOM caption holds two.)
TEXTLESS = ["\ufeff\ufeff", "<end_of_text>", "<start_of_text>", "\x00\x7f\x00", "&nbsp; &nbsp;",
            "<END_OF_TEXT> A dog runs on the grass."]
TEXTLESS_ROWS = (1, 3, 4, 6, 8, 10)


def _nothing_between_start_and_end(caption) -> bool:
    """The test's own reading of the ids in CLIP's layout: nothing but start ids before the first end id."""
    ids = TOKENIZE([caption])[0].tolist()
    return set(ids[:ids.index(TOKENIZE.eot_token_id)]) == {TOKENIZE.sot_token_id}


def _textless_sources(tmp_path):
    """(captions, CSV path, shard pattern, folder root): 12 samples, TEXTLESS at TEXTLESS_ROWS, in each source."""
    captions = [long_caption(i) for i in range(12)]
    for row, caption in zip(TEXTLESS_ROWS, TEXTLESS):
        captions[row] = caption
    csv_path = str(tmp_path / "data.csv")
    with open(csv_path, "w", newline="") as stream:
        writer = csv.writer(stream, delimiter="\t")
        writer.writerow(["filepath", "title"])
        for i, caption in enumerate(captions):
            write_image(str(tmp_path / f"{i}.png"), i)
            writer.writerow([str(tmp_path / f"{i}.png"), caption])
    samples = [(f"{i:04d}", {"jpg": jpeg_bytes(i), "txt": captions[i].encode()}) for i in range(12)]
    write_shard(tmp_path / "wds-0.tar", samples[:6])
    write_shard(tmp_path / "wds-1.tar", samples[6:])
    root = tmp_path / "folder"
    root.mkdir()
    for i, caption in enumerate(captions):
        write_image(str(root / f"{i}.png"), i)
        (root / f"{i}.txt").write_text(caption)
    return captions, csv_path, str(tmp_path / "wds-{0..1}.tar"), str(root)


def test_captions_without_text_are_skipped_and_counted_in_every_source(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    captions, csv_path, shards, root = _textless_sources(tmp_path)
    assert all(_nothing_between_start_and_end(caption) for caption in TEXTLESS)
    assert all(caption.split() for caption in TEXTLESS)  # not blank: the white-space rule alone keeps them
    kept = [i for i in range(12) if not _nothing_between_start_and_end(captions[i])]
    assert kept == [i for i in range(12) if i not in TEXTLESS_ROWS]
    want = {_ids(captions[i]) for i in kept}
    for stage in ("distill", "finetune"):
        for kind, path, extra in (("csv", csv_path, ()), ("webdataset", shards, ["--train-num-samples", "6"]),
                                  ("folder", root, ["--folder-caption-line", "first"])):
            caplog.clear()
            data = _data(stage, _args(stage, path, kind, extra))
            assert _seen_captions(data) == want, (stage, kind)
            if kind == "folder":  # reported by the folder reader, like an empty caption file
                assert "6 caption files no line of which holds text once tokenized, their images skipped" \
                    in caplog.text, stage
            else:  # counted as empty captions, the first few named with the ids the tokenizer wrote
                assert data.skipped.counts() == {"empty caption": 6}, (stage, kind, data.skipped.counts())
                named = "line 3, data row 1 column 'title'" if kind == "csv" else r"wds-\d\.tar sample 00\d\d"
                assert re.search(named + r": empty caption \(no text once tokenized: ids \[49406, 49407",
                                 caplog.text), (stage, kind)


def test_the_teacher_cache_precompute_skips_captions_without_text_as_training_does(tmp_path):
    precompute = load_script("precompute_teacher_embeddings")
    teacher = str(tmp_path / "teacher.pt")
    torch.save(open_clip.create_model(TEACHER).state_dict(), teacher)
    _, csv_path, shards, root = _textless_sources(tmp_path)
    kept = [i for i in range(12) if i not in TEXTLESS_ROWS]
    expected = {"csv": [f"row{i}" for i in kept], "webdataset": [f"{i:04d}" for i in kept],
                "folder": [f"{i}#0" for i in sorted(kept, key=str)]}  # the folder is paired in file-name order
    for kind, path in (("csv", csv_path), ("webdataset", shards), ("folder", root)):
        cache = str(tmp_path / f"cache-{kind}")
        precompute.main(["--teacher-model", TEACHER, "--teacher-pretrained", teacher, "--data", path,
                         "--dataset-type", kind, "--output", cache, "--no-progress"])
        keys = [line.split("\t")[0] for line in open(f"{cache}/index.tsv").read().splitlines()]
        assert keys == expected[kind], kind
    # stage 1 from the cache finds every sample it reads (none it skips is looked up)
    dataset = CsvTextDataset(csv_path, "title", open_clip.get_tokenizer(STUDENT))
    assert list(dataset.row_numbers) == kept
    CsvCachedTargets(dataset, TeacherCache(str(tmp_path / "cache-csv")))
    FolderCachedTargets(FolderDataset(root, open_clip.get_tokenizer(STUDENT)),
                        TeacherCache(str(tmp_path / "cache-folder")))


def test_a_folder_line_without_text_is_never_read_and_the_others_keep_their_numbers(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    root = tmp_path / "folder"
    root.mkdir()
    write_image(str(root / "mixed.png"), 0)
    (root / "mixed.txt").write_text("<end_of_text>\nA dog runs on the grass. It is brown.\n&nbsp;\nA brown dog.\n")
    dataset = FolderDataset(str(root), TOKENIZE, PREPROCESS, caption_line="random", short_line=0)
    assert dataset.items[0].lines == [1, 3]
    for epoch in range(6):
        dataset.shared_epoch.set_value(epoch)
        line = dataset.line_of(0)
        assert line in (1, 3) and dataset.key(0) == f"mixed#{line}"
        # short line 0 holds no text: the first sentence of the line read instead
        assert dataset.short_caption(0) == first_sentence(dataset.items[0].captions[line])
    assert "2 caption lines (file#n: its n-th non-empty line, from 0) that hold no text once tokenized" in caplog.text
    assert [r.key for r in folder_captions(str(root), text_check=TextCheck.of(TOKENIZE))] == ["mixed#1", "mixed#3"]


def test_a_short_caption_without_text_gives_way_to_the_long_captions_first_sentence(tmp_path):
    path = tmp_path / "data.csv"
    write_image(str(tmp_path / "0.png"), 0)
    path.write_text(f"filepath\ttitle\tshort\n{tmp_path / '0.png'}\t{long_caption(0)}\t<end_of_text>\n")
    dataset = CsvImageTextDataset(str(path), "filepath", "title", TOKENIZE, PREPROCESS, short_caption_key="short")
    assert torch.equal(dataset[0][2], TOKENIZE([first_sentence(long_caption(0))])[0])
    # a first sentence without text gives way to the whole long caption
    long = "<end_of_text>. A dog runs on the grass."
    assert short_caption_for(long, None, TextCheck.of(TOKENIZE).holds_text) == long


def test_no_vocabulary_is_assumed_a_metaclip2_tokenizer_finds_no_text_in_its_own_end_token(tmp_path):
    from support.non_clip_tokenizers import save_tokenizer  # imports transformers: only this test needs it
    folder = save_tokenizer(str(tmp_path / "xlmv"), "xlmv", ["a dog runs on the grass"])
    tokenizer = HFTokenizer(folder, context_length=77)
    ids = {caption: tokenizer.tokenizer(caption)["input_ids"] for caption in ("</s>", "<end_of_text>", "a dog")}
    assert ids["</s>"] == [0, 2, 2]  # <s> </s> </s>: nothing between the start and the first end
    assert 2 not in ids["<end_of_text>"][1:-1]  # CLIP's end token is no special token here
    check = TextCheck.of(tokenizer)
    assert [check.holds_text(c) for c in ("</s>", "<end_of_text>", "a dog")] == [False, True, True]


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
