"""The demo's progress line, its reading of a training log, and the thread count it suggests on a busy machine."""
import io

import pytest

from training_ext.demo.progress import (StatusLine, TrainLog, TrainProgress, choose_threads, format_duration,
                                        parse_train_line, progress_line)


@pytest.mark.parametrize("cpus, load, threads", [
    (2, 0.0, 2), (2, 0.49, 2), (2, 0.5, 1), (2, 5.9, 1),  # a busy 2-core machine still gets one thread
    (16, 3.2, 13), (16, 3.5, 12), (8, 7.6, 1), (4, 12.0, 1), (None, 0.0, 1)])
def test_thread_count_leaves_the_cores_the_load_takes(cpus, load, threads):
    assert choose_threads(cpus, load) == threads


def test_train_lines_of_open_clip_train_and_of_the_engine_parse():
    # open_clip_train pads the sample count to the width of the total; the engine does not
    upstream = ("2026-12-07,23:06:51 | INFO | Train Epoch: 0 [  64/8192 (1%)] Data (t): 0.198 Batch (t): 0.586, "
                "109.161/s, 109.161/s/gpu LR: 0.000010 Logit Scale: 14.286 Contrastive_loss: 4.1 (4.1) Loss: 4.1")
    engine = ("2026-12-07,23:09:23 | INFO | Train Epoch: 3 [6464/8192 (79%)] Data (t): 0.002 Batch (t): 0.224, "
              "261.486/s, 261.486/s/gpu LR: 0.000286 Cosine_loss: 0.17789 (0.32798) Loss: 0.17789 (0.32798)")
    assert parse_train_line(upstream) == (0, 64, 8192)
    assert parse_train_line(engine) == (3, 6464, 8192)
    assert parse_train_line("2026-12-07,23:07:18 | INFO | Eval Epoch: 1 [64 / 256]\tClip Loss: 1.009050") is None


@pytest.mark.parametrize("seconds, text", [(0.4, "0 s"), (40.4, "40 s"), (89, "89 s"), (90, "2 min"),
                                           (12 * 60 + 20, "12 min"), (89 * 60, "89 min"), (90 * 60, "1.5 h"),
                                           (-3, "0 s")])
def test_durations_read_in_seconds_minutes_or_hours(seconds, text):
    assert format_duration(seconds) == text


def test_progress_line_shows_the_epoch_step_pace_and_what_is_left():
    train = TrainProgress(epoch=2, epochs=4, step=60, steps=128, done=188, total=512, seconds_per_step=0.41)
    assert train.seconds_left == pytest.approx((512 - 188) * 0.41)
    assert progress_line("teacher", 80.0, train, train.seconds_left, 660.0) == \
        "teacher: epoch 2/4, step 60/128, 0.41 s/step, ~2 min left | demo ~11 min left"
    unknown = TrainProgress(epoch=1, epochs=4, step=1, steps=128, done=1, total=512, seconds_per_step=None)
    assert progress_line("teacher", 9.0, unknown) == "teacher: epoch 1/4, step 1/128"
    assert progress_line("eval detail", 12.0, None, 30.0, 30.0) == \
        "eval detail: running for 12 s, ~30 s left | demo ~30 s left"


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def _line(epoch, samples, total=640):
    return (f"2026-12-07,23:09:23 | INFO | Train Epoch: {epoch} [{samples}/{total} ({100 * samples // total}%)] "
            f"Batch (t): 0.2\n")


def test_a_growing_log_gives_steps_done_and_seconds_per_step(tmp_path):
    log_path, clock = tmp_path / "out.log", _Clock()
    log = TrainLog(log_path, epochs=2, batch_size=64, clock=clock)  # 10 steps per epoch, 20 in all
    assert log.poll() is None  # the run has not created its log yet
    log_path.write_text("2026-12-07,23:09:00 | INFO | Start epoch 0\n" + _line(0, 64))
    first = log.poll()
    assert (first.epoch, first.step, first.steps, first.done, first.total) == (1, 1, 10, 1, 20)
    assert first.seconds_per_step is None  # start-up is not a step's time
    clock.now = 104.0
    with open(log_path, "a") as handle:
        handle.write(_line(0, 640) + _line(1, 64)[:30])  # the second line is still being written
    assert (log.poll().done, log.poll().epoch) == (10, 1)
    clock.now = 106.0
    with open(log_path, "a") as handle:
        handle.write(_line(1, 64)[30:])
    latest = log.poll()
    assert (latest.epoch, latest.step, latest.done) == (2, 1, 11)
    assert latest.seconds_per_step == pytest.approx((106.0 - 100.0) / (11 - 1))
    assert latest.seconds_left == pytest.approx(9 * 0.6)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_the_status_line_rewrites_itself_on_a_terminal_and_is_silent_elsewhere():
    terminal, log = _Terminal(), io.StringIO()
    for stream in (terminal, log):
        status = StatusLine(stream)
        status.show("teacher: epoch 1/4")
        status.show("teacher: epoch 2/4")
        status.clear()
    assert terminal.getvalue() == "\rteacher: epoch 1/4\x1b[K\rteacher: epoch 2/4\x1b[K\r\x1b[K"
    assert log.getvalue() == ""
