"""The training data's fingerprint: a mid-epoch resume on changed data (same size, other rows or order) is refused
before training, naming what changed, the checkpoint untouched; the same data resumes; at an epoch boundary new
data is allowed and logged; a checkpoint without a fingerprint still resumes."""
import hashlib
import logging
import os
from types import SimpleNamespace

import pytest

from support.shard_fixtures import write_shard
from support.training_helpers import STUDENT, TEACHER, base_args, checkpoint_state, write_csv
from training_ext import main_distill_rope
from training_ext.data.fingerprint import data_fingerprint, start_file_digest
from training_ext.data.shard_checks import shard_listing
from training_ext.engine.checkpoint import ResumeRefused, check_resume_position, data_position
from training_ext.stages import distill

ROWS = 16
LAYOUT = {"dataset_type": "csv", "seed": 0, "batch_size": 2, "accum_freq": 1, "world_size": 1, "workers": 0,
          "epoch_size": ROWS, "sample_exact": True}


def _reordered(path: str) -> bytes:
    """The same CSV with its data rows in reverse order (same size, same row count)."""
    original = open(path, "rb").read()
    header, *rows = original.splitlines(keepends=True)
    with open(path, "wb") as stream:
        stream.write(header + b"".join(reversed(rows)))
    return original


def _fingerprint_of(path: str, kind: str = "csv", data=None, cache=None) -> dict:
    args = SimpleNamespace(train_data=path, teacher_cache=cache)
    return data_fingerprint(args, data, kind).value()


def test_a_csv_fingerprint_is_the_sha256_of_its_bytes_and_follows_a_rewrite(tmp_path):
    path = write_csv(str(tmp_path), rows=ROWS, images=False)
    before = _fingerprint_of(path)["train_data"]
    assert before["digest"] == hashlib.sha256(open(path, "rb").read()).hexdigest()[:32]
    assert before["source"] == f"--train-data {path} (the CSV's bytes)"
    _reordered(path)
    os.utime(path, ns=(1, 1))  # a rewrite within the same clock tick still changes the file's identity here
    assert _fingerprint_of(path)["train_data"]["digest"] != before["digest"]
    assert start_file_digest(path) is start_file_digest(path)  # one hash per file version


def test_shard_and_teacher_cache_fingerprints_follow_sizes_and_headers(tmp_path):
    for index in range(2):
        write_shard(tmp_path / f"s-{index}.tar", [(f"{index}{i:03d}", {"txt": b"a caption"}) for i in range(3)])
    pattern = str(tmp_path / "s-{0..1}.tar")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "header.json").write_text('{"rows": 6}')
    (cache / "long.f32").write_bytes(b"\0" * 24)

    def fingerprint():
        return _fingerprint_of(pattern, "webdataset", SimpleNamespace(shard_listing=shard_listing(pattern)),
                               str(cache))

    before = fingerprint()
    assert set(before) == {"train_data", "teacher_cache"} and fingerprint() == before
    write_shard(tmp_path / "s-1.tar", [(f"1{i:03d}", {"txt": b"a caption"}) for i in range(40)])
    after = fingerprint()
    assert after["train_data"] != before["train_data"] and after["teacher_cache"] == before["teacher_cache"]
    (cache / "header.json").write_text('{"rows": 7}')
    assert fingerprint()["teacher_cache"] != after["teacher_cache"]


def _position(epoch_samples: int, digest: str) -> dict:
    fingerprint = {"train_data": {"source": "--train-data /d/train.csv (the CSV's bytes)", "digest": digest}}
    return data_position(epoch_samples, 40, {**LAYOUT, "data_fingerprint": fingerprint})


def test_check_resume_position_compares_fingerprints_mid_epoch_only(caplog):
    layout = {**LAYOUT, "data_fingerprint": _position(0, "bbb")["data_fingerprint"]}
    with pytest.raises(ResumeRefused, match=r"after its first 6 samples: the data changed since the checkpoint: "
                                            r"--train-data /d/train\.csv \(the CSV's bytes\).*epoch_1\.pt"):
        check_resume_position(_position(6, "aaa"), layout, 1, "ckpt")
    check_resume_position(_position(6, "bbb"), layout, 1, "ckpt")  # the same data
    with pytest.raises(ResumeRefused) as first_epoch:  # epoch 0 has no epoch-end checkpoint before it
        check_resume_position(_position(6, "aaa"), layout, 0, "ckpt")
    assert "start the run afresh" in str(first_epoch.value) and "epoch_0.pt" not in str(first_epoch.value)
    with caplog.at_level(logging.INFO):
        check_resume_position(_position(0, "aaa"), layout, 1, "ckpt")  # an epoch boundary: allowed, logged
        assert "the data changed since the checkpoint (--train-data /d/train.csv" in caplog.text
        assert "epoch 1 starts on the new data" in caplog.text
        old = data_position(6, 40, LAYOUT)  # written before fingerprints: resumes, and says what is not checked
        check_resume_position(old, layout, 1, "ckpt")
        assert "the checkpoint has no data fingerprint" in caplog.text


class Killed(BaseException):
    """Stands for SIGKILL: nothing in the run catches it."""


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_mid_epoch_resume_on_reordered_rows_is_refused_and_new_data_starts_at_an_epoch_end(tmp_path, monkeypatch,
                                                                                            caplog):
    train = write_csv(str(tmp_path / "train"), rows=ROWS, images=False)
    real_losses, calls = distill.distillation_losses, []

    def losses(*args):
        calls.append(1)
        if len(calls) == 5:
            raise Killed()
        return real_losses(*args)

    def run(*extra, epochs=1):
        argv = ["--model", STUDENT, "--teacher-model", TEACHER] + base_args(
            str(tmp_path / "logs"), "run", train, batch_size=2, epochs=epochs, extra=["--save-every-n-steps", "3",
                                                                                      *extra])
        return main_distill_rope.run(main_distill_rope.parse_args(argv))

    monkeypatch.setattr(distill, "distillation_losses", losses)
    with pytest.raises(Killed):
        run()
    latest = tmp_path / "logs" / "run" / "checkpoints" / "epoch_latest.pt"
    assert checkpoint_state(str(latest))["data_position"]["epoch_samples"] == 6
    before = _sha(latest)

    original = _reordered(train)
    with pytest.raises(ResumeRefused, match=rf"cannot continue epoch 0 after its first 6 samples: the data changed "
                                            rf"since the checkpoint: --train-data {train} \(the CSV's bytes\)"):
        run("--resume", "latest")
    assert _sha(latest) == before and len(calls) == 5  # refused before any step, nothing written

    open(train, "wb").write(original)  # the data the run started with: it resumes
    state = run("--resume", "latest")
    assert (state.epoch, state.step) == (1, ROWS // 2)

    _reordered(train)
    with caplog.at_level(logging.WARNING):  # an epoch boundary: new data may start, and the log says so
        state = run("--resume", "latest", epochs=2)
    assert (state.epoch, state.step) == (2, ROWS)
    assert f"the data changed since the checkpoint (--train-data {train} (the CSV's bytes)); epoch 1 starts on " \
           f"the new data" in caplog.text
