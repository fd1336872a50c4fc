"""Shards that are cut short, damaged or missing: named and counted, never a silently shrunk epoch."""
import logging
import tarfile

import open_clip
import pytest

from support.shard_fixtures import jpeg_bytes, write_shard
from support.training_helpers import STUDENT, TEACHER, long_caption
from training_ext import main as train_main
from training_ext import main_distill_rope
from training_ext.data.keyed_captions import webdataset_captions
from training_ext.data.loaders import get_text_data
from training_ext.data.shard_checks import ShardReader, ShardsMissingError, shard_listing
from training_ext.data.skips import SkipLog

TOKENIZE = open_clip.get_tokenizer(STUDENT)
SAMPLES = 16


def _shard(path, first: int = 0) -> str:
    return write_shard(path, [(f"{i:04d}", {"txt": long_caption(i).encode(), "jpg": jpeg_bytes(i)})
                              for i in range(first, first + SAMPLES)])


def _members(path):
    """(name, header offset, data end) of each member, read by tarfile from the intact shard."""
    with tarfile.open(path) as archive:
        return [(m.name, m.offset, m.offset_data + m.size) for m in archive]


def _keys_before(members, cut: int) -> list:
    """The samples a reader gives from a shard cut at byte ``cut``: those with a member whose data is whole."""
    return sorted({name.split(".")[0] for name, _, end in members if end <= cut})


def _args(shards, extra=()):
    args = main_distill_rope.parse_args(
        ["--model", STUDENT, "--teacher-model", TEACHER, "--train-data", shards, "--dataset-type", "webdataset",
         "--batch-size", "2", "--workers", "0", "--device", "cpu", *extra])
    args.world_size, args.rank, args.distributed = 1, 0, False
    return args


@pytest.mark.timeout(120)
def test_a_shard_cut_at_half_its_size_is_named_counted_and_the_refilled_epoch_says_so(tmp_path, caplog):
    path = _shard(tmp_path / "train-0.tar")
    members = _members(path)
    data = open(path, "rb").read()
    cut = len(data) // 2  # an interrupted download
    open(path, "wb").write(data[:cut])
    given = _keys_before(members, cut)
    assert 0 < len(given) < SAMPLES

    data = get_text_data(_args(path, ["--train-num-samples", str(SAMPLES)]), TOKENIZE)
    with caplog.at_level(logging.INFO):
        seen = [tuple(ids.tolist()) for (batch,) in data.dataloader for ids in batch]
    assert len(seen) == SAMPLES  # the epoch is filled (webdataset's with_epoch) ...
    assert set(seen) == {tuple(TOKENIZE([long_caption(int(key))])[0].tolist()) for key in given}  # ... by repeats
    passes = -(-SAMPLES // (len(given) // 2 * 2))
    assert data.skipped.broken_shards() == passes  # every pass over the shard breaks off again
    log = caplog.text
    assert f"shard {path}: cut short" in log and f"it gave {len(given)} samples before the break" in log
    repeated = SAMPLES - len(given) // 2 * 2  # pass 1 gives whole batches of the samples before the cut
    assert f"epoch 0: {repeated} of the {SAMPLES} samples this process read were repeats" in log
    assert f"{passes} shard reads broke off so far" in log

    caplog.clear()
    with caplog.at_level(logging.WARNING):  # the teacher-cache precompute reads the same samples, and says so
        assert [record.key for record in webdataset_captions(path)] == given
    assert f"{path}: cut short" in caplog.text and f"it gave {len(given)} samples" in caplog.text


@pytest.mark.parametrize("damage", ["cut at a header", "cut in a member's data", "damaged header", "no end marker"])
def test_the_reader_names_where_a_shard_breaks_off_and_reads_on(tmp_path, caplog, damage):
    bad, good = _shard(tmp_path / "a.tar"), _shard(tmp_path / "b.tar", first=SAMPLES)
    members = _members(bad)
    data = bytearray(open(bad, "rb").read())
    name, header, _ = members[7]
    cut = {"cut at a header": header, "cut in a member's data": header + 600, "no end marker": members[-1][2]}
    if damage == "damaged header":
        data[header:header + 8] = b"garbage!"
    else:
        del data[-(-cut[damage] // 512) * 512 if damage == "no end marker" else cut[damage]:]
    open(bad, "wb").write(bytes(data))
    expected = {"cut at a header": "cut short: it ends at byte",
                "cut in a member's data": f"cut short: it ends at byte {header + 600}, inside a member",
                "damaged header": f"damaged: the tar header at byte {header}", "no end marker": "cut short"}[damage]
    given = _keys_before(members, header) if damage != "no end marker" else _keys_before(members, len(data))

    skips = SkipLog()
    reader = ShardReader(skips, handler=lambda error: True)
    with caplog.at_level(logging.WARNING):
        keys = [sample["__key__"] for sample in reader([{"url": bad}, {"url": good}])]
    assert keys == given + [f"{i:04d}" for i in range(SAMPLES, 2 * SAMPLES)]  # the next shard is read whole
    assert skips.broken_shards() == 1 and skips.get() == 0
    assert f"shard {bad}: {expected}" in caplog.text and f"it gave {len(given)} samples" in caplog.text
    assert "shard reads broken off: 1" in skips.summary()


def test_intact_shards_raise_nothing(tmp_path):
    skips = SkipLog()
    shards = [_shard(tmp_path / "a.tar"), _shard(tmp_path / "b.tar", first=SAMPLES)]
    keys = [s["__key__"] for s in ShardReader(skips, handler=lambda error: True)([{"url": u} for u in shards])]
    assert len(keys) == 2 * SAMPLES and skips.broken_shards() == 0 and skips.summary() == ""
    assert len(list(webdataset_captions(str(tmp_path / "{a,b}.tar")))) == 2 * SAMPLES


def test_a_missing_shard_stops_before_any_model_naming_it(tmp_path, capsys):
    for index in (0, 2):
        _shard(tmp_path / f"train-{index}.tar", first=index * SAMPLES)
    pattern = str(tmp_path / "train-{0..3}.tar")
    with pytest.raises(SystemExit):
        _args(pattern, ["--train-num-samples", "32"])  # the flag checks, before any model is built
    error = capsys.readouterr().err
    assert f"--train-data {pattern}: 2 of 4 shards do not exist: {tmp_path / 'train-1.tar'}, " \
           f"{tmp_path / 'train-3.tar'}" in error
    with pytest.raises(ShardsMissingError, match="2 of 4 shards do not exist"):  # the precompute's reader too
        next(webdataset_captions(pattern))
    listing = shard_listing(str(tmp_path / "train-{0..2..2}.tar") + "::pipe:cat x.tar")
    assert listing.missing == [] and listing.remote == ["pipe:cat x.tar"]  # remote: checked when read
    assert sorted(listing.sizes.values()) == sorted(
        (tmp_path / f"train-{i}.tar").stat().st_size for i in (0, 2))


def test_open_clip_trains_main_refuses_missing_shards_before_it_starts(tmp_path, capsys):
    _shard(tmp_path / "train-0.tar")
    pattern = str(tmp_path / "train-{0..1}.tar")
    with pytest.raises(SystemExit) as stop:
        train_main.main(["--model", TEACHER, "--train-data", pattern, "--dataset-type", "webdataset",
                         "--train-num-samples", "32", "--batch-size", "4", "--logs", str(tmp_path / "logs"),
                         "--device", "cpu"])
    assert stop.value.code == 2 and not (tmp_path / "logs").exists()  # before open_clip_train set anything up
    error = capsys.readouterr().err
    assert f"--train-data {pattern}: 1 of 2 shards do not exist: {tmp_path / 'train-1.tar'}" in error
    assert "Traceback" not in error


def test_the_precompute_refuses_missing_shards_before_loading_the_teacher(tmp_path, monkeypatch):
    from support.data_prep_fixtures import load_script
    script = load_script("precompute_teacher_embeddings")
    monkeypatch.setattr(script, "teacher_checkpoint_file", lambda *a, **k: pytest.fail("the teacher was loaded"))
    with pytest.raises(ShardsMissingError, match=r"--data .*1 of 1 shards do not exist"):
        script.main(["--teacher-model", TEACHER, "--teacher-pretrained", "x.pt", "--dataset-type", "webdataset",
                     "--data", str(tmp_path / "none-{0..0}.tar"), "--output", str(tmp_path / "cache")])
