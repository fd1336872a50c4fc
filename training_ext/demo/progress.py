"""What the demo shows while a step runs: one line, rewritten in place, with the step's progress and an estimate of
what is left; and the thread count a busy machine would rather use.

The steps are subprocesses whose own output goes to a file (their flags, model summaries and per-step logging
would bury the demo's lines). A training step's progress is read from its open_clip_train log (``out.log``), whose
``Train Epoch: E [N/TOTAL (P%)]`` lines both open_clip_train and this package's engine write.
"""
import math
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, TextIO, Tuple

_TRAIN_LINE = re.compile(r"Train Epoch: (\d+) \[\s*(\d+)/(\d+)")


def choose_threads(cpu_count: Optional[int], load: float) -> int:
    """Threads per step that leave the cores other jobs use: ``cpu_count`` minus the 1-minute load average,
    rounded half up, at least 1 and at most ``cpu_count`` (``None``, as ``os.cpu_count`` may say: 1 core)."""
    cores = max(1, cpu_count or 1)
    return max(1, min(cores, cores - math.floor(load + 0.5)))


def parse_train_line(line: str) -> Optional[Tuple[int, int, int]]:
    """(epoch counted from 0, samples done in that epoch, samples per epoch) of a ``Train Epoch`` log line, else
    None."""
    found = _TRAIN_LINE.search(line)
    return tuple(int(x) for x in found.groups()) if found else None


def format_duration(seconds: float) -> str:
    """'40 s' under 90 s, '12 min' under 90 minutes, else '2.5 h'."""
    if seconds < 90:
        return f"{max(0, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


@dataclass
class TrainProgress:
    """Where a training run stands, from its log: ``done`` of ``total`` optimizer steps."""
    epoch: int          # counted from 1
    epochs: int
    step: int           # optimizer steps done in this epoch
    steps: int          # optimizer steps per epoch
    done: int
    total: int
    seconds_per_step: Optional[float]  # None until two log lines have been seen

    @property
    def seconds_left(self) -> Optional[float]:
        return None if self.seconds_per_step is None else (self.total - self.done) * self.seconds_per_step


def progress_line(name: str, elapsed: float, train: Optional[TrainProgress] = None,
                  step_left: Optional[float] = None, demo_left: Optional[float] = None) -> str:
    """The one status line of a running step, e.g. 'teacher: epoch 2/4, step 60/128, 0.41 s/step, ~4 min left |
    demo ~11 min left'; a step without a training log shows its elapsed time instead. Unknown estimates (None)
    are left out."""
    parts = [f"{name}:"]
    if train is not None:
        parts.append(f"epoch {train.epoch}/{train.epochs}, step {train.step}/{train.steps}")
        if train.seconds_per_step is not None:
            parts[-1] += f", {train.seconds_per_step:.2f} s/step"
    else:
        parts.append(f"running for {format_duration(elapsed)}")
    if step_left is not None:
        parts[-1] += f", ~{format_duration(step_left)} left"
    line = " ".join(parts)
    if demo_left is not None:
        line += f" | demo ~{format_duration(demo_left)} left"
    return line


class TrainLog:
    """Follows a training run's ``out.log`` (which appears once the run has started) as it grows."""

    def __init__(self, path: Path, epochs: int, batch_size: int, clock=time.monotonic):
        self.path, self.epochs, self.batch_size, self.clock = path, epochs, batch_size, clock
        self._offset, self._partial = 0, b""
        self._first: Optional[Tuple[float, int]] = None  # (time, steps done) at the first line seen
        self.progress: Optional[TrainProgress] = None

    def poll(self) -> Optional[TrainProgress]:
        """Reads what the log gained since the last call; returns the latest progress (None before the first
        ``Train Epoch`` line). Seconds per step: time between the first line seen and the latest, so the run's
        start-up is left out and its validations and checkpoints are in."""
        try:
            with open(self.path, "rb") as handle:  # bytes: a read may end inside a character, or a line
                handle.seek(self._offset)
                data = handle.read()
                self._offset = handle.tell()
        except FileNotFoundError:
            return self.progress
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            parsed = parse_train_line(line.decode("utf-8", errors="replace"))
            if parsed is not None:
                self._update(*parsed)
        return self.progress

    def _update(self, epoch: int, samples: int, per_epoch: int) -> None:
        steps = max(1, per_epoch // self.batch_size)
        step = samples // self.batch_size
        done = epoch * steps + step
        now = self.clock()
        if self._first is None:
            self._first = (now, done)
        started, first_done = self._first
        rate = (now - started) / (done - first_done) if done > first_done else None
        self.progress = TrainProgress(epoch=epoch + 1, epochs=self.epochs, step=step, steps=steps, done=done,
                                      total=steps * self.epochs, seconds_per_step=rate)


class StatusLine:
    """One line rewritten in place on a terminal; silent when ``stream`` is not one (CI logs keep only the
    demo's own lines)."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.live = bool(getattr(stream, "isatty", lambda: False)())
        self._shown = False

    def show(self, text: str) -> None:
        if not self.live:
            return
        width = max(20, shutil.get_terminal_size().columns - 1)  # a wrapped line could not be rewritten in place
        self.stream.write("\r" + text[:width] + "\x1b[K")
        self.stream.flush()
        self._shown = True

    def clear(self) -> None:
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False
