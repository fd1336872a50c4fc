"""Checkpoints: a run killed mid-epoch (SIGKILL) resumes with --resume latest and ends where an uninterrupted run
ends; a NaN loss stops the run and leaves the last good checkpoint untouched."""
import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from support.training_helpers import STUDENT, TEACHER, assert_state_dicts_close, base_args, checkpoint_state, \
    save_stock_teacher, write_csv
from training_ext import main_distill_rope
from training_ext.stages import distill

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _flags(teacher):
    return ["--model", STUDENT, "--teacher-model", TEACHER, "--pretrained", teacher, "--teacher-pretrained", teacher]


def _wait_for_line(path, text, process, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(path) and text in open(path).read():
            return
        if process.poll() is not None:
            pytest.fail(f"training ended (rc {process.returncode}) before writing '{text}'")
        time.sleep(0.02)
    pytest.fail(f"no '{text}' in {path} after {timeout} s")


@pytest.mark.slow
def test_killed_run_resumes_mid_epoch_and_matches_uninterrupted_run(tmp_path):
    teacher = save_stock_teacher(str(tmp_path / "teacher.pt"))
    train = write_csv(str(tmp_path / "train"), rows=40, images=False)  # batch 2: 20 steps per epoch
    argv = _flags(teacher) + base_args(str(tmp_path / "logs"), "run", train, batch_size=2, epochs=2,
                                       extra=["--save-every-n-steps", "3"])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with open(tmp_path / "killed.out", "w") as output:
        process = subprocess.Popen([sys.executable, "-m", "training_ext.main_distill_rope"] + argv, env=env,
                                   cwd=str(tmp_path), stdout=output, stderr=subprocess.STDOUT)
        try:
            _wait_for_line(str(tmp_path / "logs" / "run" / "out.log"), "(epoch 0, step 3)", process)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
    assert process.returncode == -signal.SIGKILL
    checkpoints = tmp_path / "logs" / "run" / "checkpoints"
    killed_at = checkpoint_state(str(checkpoints / "epoch_latest.pt"))
    assert killed_at["epoch"] == 0 and 3 <= killed_at["step"] < 20, "the kill must land mid-epoch"

    resumed = main_distill_rope.run(main_distill_rope.parse_args(argv + ["--resume", "latest"]))
    assert (resumed.epoch, resumed.step) == (2, 40)
    log = open(tmp_path / "logs" / "run" / "out.log").read()
    assert f"(epoch 0, step {killed_at['step']})" in log.split("--resume latest")[-1]

    uninterrupted = main_distill_rope.run(main_distill_rope.parse_args(
        _flags(teacher) + base_args(str(tmp_path / "logs"), "ref", train, batch_size=2, epochs=2)))
    assert_state_dicts_close(resumed.model.state_dict(), uninterrupted.model.state_dict(), atol=1e-6, rtol=1e-5)
    final = checkpoint_state(str(checkpoints / "epoch_2.pt"))
    assert (final["epoch"], final["step"]) == (2, 40)
    assert final["optimizer"]["state"][0]["step"] == 40  # optimizer state carried across the kill


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    train = write_csv(str(tmp_path / "train"), rows=16, images=False)
    argv = ["--model", STUDENT, "--teacher-model", TEACHER] + base_args(
        str(tmp_path / "logs"), "nan", train, extra=["--save-every-n-steps", "1"])
    latest = tmp_path / "logs" / "nan" / "checkpoints" / "epoch_latest.pt"
    real_losses, calls, digest_before = distill.distillation_losses, [], []

    def losses_turning_nan(student, teacher, weights):
        calls.append(1)
        terms = real_losses(student, teacher, weights)
        if len(calls) == 3:
            digest_before.append(hashlib.sha256(latest.read_bytes()).hexdigest())
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(distill, "distillation_losses", losses_turning_nan)
    with pytest.raises(SystemExit, match=r"non-finite loss \(nan.*epoch 0 step 2.*epoch_latest\.pt"):
        main_distill_rope.main(argv)
    assert hashlib.sha256(latest.read_bytes()).hexdigest() == digest_before[0]
    good = checkpoint_state(str(latest))
    assert good["step"] == 2 and all(torch.isfinite(v).all() for v in good["state_dict"].values())
    assert not (latest.parent / "epoch_1.pt").exists()
