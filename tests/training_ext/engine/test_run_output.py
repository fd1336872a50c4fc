"""What a training run prints: a few lines on the terminal, every flag in its log file and params.txt, and no
upstream warning that contradicts what the stage then does."""
import pytest

from support.training_helpers import distill_args, save_stock_teacher, write_csv
from training_ext import main_distill_rope
from training_ext.engine import trainer


def test_flags_go_to_the_log_file_and_the_student_is_not_called_random(tmp_path, capsys, monkeypatch):
    train = write_csv(str(tmp_path / "data"), rows=8)
    teacher = save_stock_teacher(str(tmp_path / "teacher.pt"))
    # no --pretrained: the student is built empty and then initialised from the teacher
    args = main_distill_rope.ENTRY.parse_args(distill_args(str(tmp_path / "logs"), "run", train)
                                              + ["--teacher-pretrained", teacher])
    monkeypatch.setattr(trainer, "train", lambda *a, **k: None)  # everything up to the first epoch
    trainer.run_stage(args, main_distill_rope.ENTRY.stage())

    terminal = capsys.readouterr().err.splitlines()
    run = tmp_path / "logs" / "run"
    log = (run / "out.log").read_text().splitlines()
    flags = [f"  {line}" for line in (run / "params.txt").read_text().splitlines()]
    assert len(flags) > 50

    def messages(lines):
        return [line.split(" | ", 2)[-1] for line in lines]
    assert [m for m in messages(log) if m in flags] == flags  # every flag, in params.txt's order
    assert not [m for m in messages(terminal) if m in flags]
    assert f"flags: all {len(flags)} values in {run / 'params.txt'} and the log" in messages(terminal)
    assert len(terminal) < 40

    # open_clip built the student with no weights and says it is random; the stage loads the teacher's next
    assert not [line for line in terminal + log if "initialized randomly" in line]
    assert any(m.startswith("student: initialised from the teacher tiny-clip") for m in messages(terminal))


def test_a_run_that_wrote_no_checkpoint_can_be_run_again_under_its_name(tmp_path, monkeypatch):
    """A run that failed before its first checkpoint leaves only its log: the same command runs again (the old log
    kept beside); a run with a checkpoint is refused before anything is built, as open_clip_train refuses it."""
    train = write_csv(str(tmp_path / "data"), rows=8)
    teacher = save_stock_teacher(str(tmp_path / "teacher.pt"))
    argv = distill_args(str(tmp_path / "logs"), "run", train) + ["--teacher-pretrained", teacher]
    run = tmp_path / "logs" / "run"
    run.mkdir(parents=True)
    (run / "out.log").write_text("the failed run's log\n")
    args = main_distill_rope.ENTRY.parse_args(argv)  # refused here if the folder counted as a run
    monkeypatch.setattr(trainer, "train", lambda *a, **k: None)
    trainer.run_stage(args, main_distill_rope.ENTRY.stage())
    kept = [p for p in run.iterdir() if p.name.startswith("out.log.failed-")]
    assert len(kept) == 1 and kept[0].read_text() == "the failed run's log\n"
    assert "held the log of a run that wrote no checkpoint" in (run / "out.log").read_text()

    (run / "checkpoints").mkdir(exist_ok=True)
    (run / "checkpoints" / "epoch_1.pt").write_bytes(b"")
    with pytest.raises(SystemExit) as stopped:
        main_distill_rope.ENTRY.parse_args(argv)
    assert stopped.value.code == 2
