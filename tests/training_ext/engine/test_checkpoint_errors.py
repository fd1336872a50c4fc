"""A checkpoint that cannot be read or written is one error line naming the file, the cause and the fix: a truncated
--resume file is refused at flag parsing (or, for --resume latest, before any model is built), and a write that
runs out of space names the free space and the bytes written, removes its partial file and leaves the previous
checkpoint loadable."""
import errno
import os

import pytest
import torch

from support.training_helpers import distill_args, write_csv
from training_ext import main_distill_rope
from training_ext.engine import checkpoint


def _training_checkpoint(path, step):
    torch.save({"epoch": 0, "step": step, "state_dict": {"w": torch.full((64, 64), float(step))},
                "optimizer": {"state": {}, "param_groups": []}}, path)
    return str(path)


def _truncate(path, keep=0.5):
    data = open(path, "rb").read()
    with open(path, "wb") as stream:
        stream.write(data[:int(len(data) * keep)])


def test_truncated_resume_file_is_refused_at_flag_parsing_naming_the_earlier_checkpoints(tmp_path, capsys):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    older = _training_checkpoint(folder / "epoch_1.pt", 10)
    os.utime(older, (1, 1))
    newer = _training_checkpoint(folder / "epoch_2.pt", 20)
    broken = _training_checkpoint(folder / "epoch_3.pt", 30)
    _truncate(broken)
    train = write_csv(str(tmp_path / "train"), rows=8, images=False)
    with pytest.raises(SystemExit) as refused:
        main_distill_rope.parse_args(distill_args(str(tmp_path / "logs"), "r", train) + ["--resume", broken])
    assert refused.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"python -m training_ext.main_distill_rope: error: --resume {broken}: truncated or not a "
                          f"torch checkpoint (a zip archive of {os.path.getsize(broken)} bytes without the directory")
    assert err.endswith(f"the checkpoints beside it, newest first: {os.path.basename(newer)}, "
                        f"{os.path.basename(older)}; pass one to --resume")


def test_resume_latest_with_a_truncated_latest_stops_before_any_model_is_built(tmp_path, capsys, monkeypatch):
    train = write_csv(str(tmp_path / "train"), rows=8, images=False)
    folder = tmp_path / "logs" / "r" / "checkpoints"
    folder.mkdir(parents=True)
    _training_checkpoint(folder / "epoch_1.pt", 2)
    latest = _training_checkpoint(folder / "epoch_latest.pt", 3)
    _truncate(latest, keep=0.9)
    from training_ext.stages import distill_stage

    def no_model(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr(distill_stage.DistillStage, "build_models", no_model)
    with pytest.raises(SystemExit) as refused:
        main_distill_rope.main(distill_args(str(tmp_path / "logs"), "r", train) + ["--resume", "latest"])
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "build_models" not in err
    assert err.strip().splitlines()[-1] == (
        f"python -m training_ext.main_distill_rope: error: --resume latest: {latest}: truncated or not a torch "
        f"checkpoint (a zip archive of {os.path.getsize(latest)} bytes without the directory torch.save writes "
        f"last: cut short); move it away and --resume latest takes the newest of the checkpoints beside it "
        f"(epoch_1.pt)")


def test_file_that_is_not_a_checkpoint_is_named_as_such(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello")
    assert checkpoint.weights_file_problem(str(path)) == "5 bytes starting b'hell', not a zip archive"
    whole = _training_checkpoint(tmp_path / "whole.pt", 1)
    assert checkpoint.weights_file_problem(whole) is None


class _DiskFullAfter:
    """A file object that takes ``room`` bytes and then fails as a full disk does; ``accepted``: bytes it took."""

    def __init__(self, stream, room):
        self.stream, self.room, self.accepted = stream, room, 0

    def write(self, data):
        if self.accepted + len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.accepted += len(data)
        return self.stream.write(data)

    def __getattr__(self, name):
        return getattr(self.stream, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stream.close()


def test_write_that_runs_out_of_space_names_path_cause_and_size_and_keeps_the_previous_checkpoint(tmp_path,
                                                                                                   monkeypatch):
    path = str(tmp_path / "epoch_latest.pt")
    checkpoint.write_atomically({"step": 1, "w": torch.ones(10)}, path)
    state = {"step": 2, "w": torch.zeros(25_000), "v": [torch.zeros(75_000)]}  # 400000 bytes of tensor data
    real_fdopen, disks = os.fdopen, []

    def fdopen_filling_up(fd, *args, **kwargs):
        disks.append(_DiskFullAfter(real_fdopen(fd, *args, **kwargs), room=150_000))
        return disks[-1]

    monkeypatch.setattr(os, "fdopen", fdopen_filling_up)
    with pytest.raises(checkpoint.CheckpointWriteError) as failed:
        checkpoint.write_atomically(state, path)
    monkeypatch.undo()
    accepted = disks[0].accepted
    shown = f"{accepted} bytes" if accepted < 1024 else f"{accepted / 1024:.1f} KiB"
    assert str(failed.value) == (
        f"cannot write checkpoint {path}: No space left on device ("
        + str(failed.value).split("(", 1)[1].split(" free in ")[0] + f" free in {tmp_path}) ({shown} of about "
        f"390.6 KiB written); the partial file was removed and the previous epoch_latest.pt is untouched. Free "
        f"space (or give --logs a disk with room), then continue with --resume latest")
    assert os.listdir(tmp_path) == ["epoch_latest.pt"]  # no temporary file left
    assert torch.load(path, weights_only=True)["step"] == 1
