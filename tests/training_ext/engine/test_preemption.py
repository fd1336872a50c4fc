"""SIGTERM / SIGINT end a run at a step boundary with a checkpoint of every completed step (engine.preemption):
stage 2 without --save-every-n-steps, signalled during its second step, exits 143 with a checkpoint at step 2 and
the command that resumes it, and --resume latest ends with the weights of an uninterrupted run. Under torchrun
(2 gloo processes) a SIGTERM to every process of the group, DataLoader workers included, as SLURM sends it, stops
both ranks at the same step, and the resumed run matches the uninterrupted one too."""
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

from support.processes import ROOT, process_env
from support.training_helpers import STUDENT, assert_state_dicts_close, base_args, checkpoint_state, \
    save_stock_teacher, write_csv
from training_ext import main_context_finetune_rope
from training_ext.engine import loop, preemption

SIGNAL_CHECK = os.path.join(ROOT, "tests", "support", "signal_check.py")


def _flags(pretrained):
    return ["--model", STUDENT, "--pretrained", pretrained]


def _signal_during_step(monkeypatch, signum, step):
    """SIGTERM/SIGINT to this process while optimizer step ``step`` (1-based) is being applied."""
    real, calls = loop.apply_update, []

    def update_then_signal(state, grad_clip_norm):
        real(state, grad_clip_norm)
        calls.append(1)
        if len(calls) == step:
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(loop, "apply_update", update_then_signal)


def test_sigterm_mid_epoch_checkpoints_every_completed_step_and_resume_matches_uninterrupted(tmp_path, monkeypatch,
                                                                                             capsys):
    pretrained = save_stock_teacher(str(tmp_path / "clip.pt"))
    train = write_csv(str(tmp_path / "train"), rows=16)  # batch 4: 4 steps
    argv = _flags(pretrained) + base_args(str(tmp_path / "logs"), "run", train)
    handlers_before = {s: signal.getsignal(s) for s in preemption.STOP_SIGNALS}

    _signal_during_step(monkeypatch, signal.SIGTERM, step=2)
    with pytest.raises(SystemExit) as stopped:
        main_context_finetune_rope.main(argv)
    assert stopped.value.code == 143
    assert {s: signal.getsignal(s) for s in preemption.STOP_SIGNALS} == handlers_before  # handlers restored
    report = capsys.readouterr().err
    latest = tmp_path / "logs" / "run" / "checkpoints" / "epoch_latest.pt"
    assert f"stopped on SIGTERM after step 2 (epoch 0); every completed step is in {latest}" in report
    assert "exit status 143" in report and "scontrol requeue $SLURM_JOB_ID" in report
    resume_line = next(line for line in report.splitlines() if line.startswith("resume with"))
    assert resume_line.endswith(f"{sys.executable} -m training_ext.main_context_finetune_rope "
                                + " ".join(argv) + " --resume latest")
    saved = checkpoint_state(str(latest))
    assert (saved["epoch"], saved["step"]) == (0, 2)
    assert saved["data_position"]["epoch_samples"] == 8 and saved["optimizer"]["state"][0]["step"] == 2
    assert not (latest.parent / "epoch_1.pt").exists()

    monkeypatch.undo()
    resumed = main_context_finetune_rope.run(main_context_finetune_rope.parse_args(argv + ["--resume", "latest"]))
    uninterrupted = main_context_finetune_rope.run(main_context_finetune_rope.parse_args(
        _flags(pretrained) + base_args(str(tmp_path / "logs"), "ref", train)))
    assert (resumed.epoch, resumed.step) == (uninterrupted.epoch, uninterrupted.step) == (1, 4)
    assert_state_dicts_close(resumed.model.state_dict(), uninterrupted.model.state_dict(), atol=1e-6, rtol=1e-5)
    assert_state_dicts_close(checkpoint_state(str(latest.parent / "epoch_1.pt"))["state_dict"],
                             uninterrupted.model.state_dict(), atol=1e-6, rtol=1e-5)


def test_signal_in_last_step_of_an_epoch_writes_that_epochs_checkpoint(tmp_path, monkeypatch, capsys):
    pretrained = save_stock_teacher(str(tmp_path / "clip.pt"))
    train = write_csv(str(tmp_path / "train"), rows=8)  # batch 4: 2 steps an epoch
    argv = _flags(pretrained) + base_args(str(tmp_path / "logs"), "run", train, epochs=2)
    _signal_during_step(monkeypatch, signal.SIGINT, step=2)
    with pytest.raises(SystemExit) as stopped:
        main_context_finetune_rope.main(argv)
    assert stopped.value.code == 130
    folder = tmp_path / "logs" / "run" / "checkpoints"
    assert "stopped on SIGINT after step 2 (epoch 1)" in capsys.readouterr().err
    assert checkpoint_state(str(folder / "epoch_latest.pt"))["data_position"]["epoch_samples"] == 0
    assert not (folder / "epoch_2.pt").exists()


@pytest.mark.slow
def test_repeated_signal_within_the_window_is_one_request_a_later_one_aborts_and_workers_ignore_both():
    """tests/support/signal_check.py: two SIGTERMs in a row (a launcher forwarding the one the process got) are one
    request; a DataLoader worker that gets SIGTERM and SIGINT keeps serving; a SIGINT after the window ends the
    process by the default action."""
    done = subprocess.run([sys.executable, SIGNAL_CHECK], env=process_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == -signal.SIGINT, done.stdout + done.stderr
    assert done.stdout.splitlines() == ["requested 15 after a repeat", "worker served 8 batches", "aborting"]
    assert done.stderr.count("SIGTERM received: stopping after the current step") == 1


def test_resume_command_keeps_the_flags_and_replaces_resume():
    command = preemption.resume_command("python -m m", ["--lr", "1e-3", "--resume", "a b.pt", "--logs", "x"], "run")
    assert command == f"{shlex.quote(sys.executable)} -m m --lr 1e-3 --logs x --name run --resume latest"
    assert preemption.resume_command("p", ["--name=n", "--resume=latest"], "n") == "p --name=n --resume latest"


def _children(pid):
    """The processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stream:
                    fields = stream.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def _wait_for(path, text, process, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(path) and text in open(path).read():
            return
        assert process.poll() is None, f"training ended (rc {process.returncode}) before writing '{text}'"
        time.sleep(0.02)
    pytest.fail(f"no '{text}' in {path} after {timeout} s")


@pytest.mark.slow
def test_torchrun_sigterm_to_every_process_stops_both_ranks_at_one_step_and_resume_matches(tmp_path):
    pretrained = save_stock_teacher(str(tmp_path / "clip.pt"))
    train = write_csv(str(tmp_path / "train"), rows=32)  # 2 processes x batch 2: 8 steps
    flags = _flags(pretrained) + ["--gather-with-grad", "--opt", "timm/sgd", "--momentum", "0.9", "--lr", "0.05"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
               "training_ext.main_context_finetune_rope", "--"] + flags + base_args(
        str(tmp_path / "logs"), "ddp", train, batch_size=2, extra=["--workers", "1"])
    launched = subprocess.Popen(command, env=process_env(), cwd=str(tmp_path), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for(str(tmp_path / "logs" / "ddp" / "out.log"), "Train Epoch: 0 [8/32", launched)
        # as SLURM ends a step: every process (torchrun, both ranks and their DataLoader workers, each rank in a
        # session of its own) gets SIGTERM, and torchrun forwards another to each rank's group
        ranks = _children(launched.pid)
        os.kill(launched.pid, signal.SIGTERM)
        for rank in ranks:
            os.killpg(rank, signal.SIGTERM)
        output, _ = launched.communicate(timeout=120)
    finally:
        if launched.poll() is None:
            os.killpg(launched.pid, signal.SIGKILL)
    output = output.decode()
    assert output.count("SIGTERM received: stopping after the current step") == 2, output[-3000:]  # once a rank
    assert "exit status 143" in output and "--resume latest" in output, output[-3000:]
    # no DataLoader worker died (torch's messages for one killed or gone), no rank failed (torchrun's own
    # SignalException is the one traceback: it exits 1 whenever it is signalled)
    assert "killed by signal" not in output and "exited unexpectedly" not in output, output[-3000:]
    assert output.count("Traceback") == 1 and "SignalException" in output, output[-3000:]
    saved = checkpoint_state(str(tmp_path / "logs" / "ddp" / "checkpoints" / "epoch_latest.pt"))
    assert 2 <= saved["step"] < 8 and saved["data_position"]["epoch_samples"] == 4 * saved["step"]

    resumed = main_context_finetune_rope.run(main_context_finetune_rope.parse_args(
        flags + base_args(str(tmp_path / "logs"), "ddp", train, batch_size=4, extra=["--resume", "latest"])))
    uninterrupted = main_context_finetune_rope.run(main_context_finetune_rope.parse_args(
        flags + base_args(str(tmp_path / "logs"), "one", train, batch_size=4)))
    assert (resumed.epoch, resumed.step) == (uninterrupted.epoch, uninterrupted.step) == (1, 8)
    assert_state_dicts_close(resumed.model.state_dict(), uninterrupted.model.state_dict())
