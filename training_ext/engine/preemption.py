"""Ending a training run cleanly on SIGTERM (SLURM preemption or time limit, ``kill``) and SIGINT (Ctrl-C).

The first signal only asks the run to stop: the epoch loop finishes the optimizer step it is in, every process
agrees on that step (``StopRequest.agreed``: one all-reduce of one integer per step), rank 0 writes a checkpoint
holding every completed step, and the command exits with 128 + the signal number (143 for SIGTERM, 130 for SIGINT:
the status a shell reports for a process the signal killed) after printing the command that resumes the run.

Every process of a SLURM step and of a terminal's foreground group gets the signal, and torchrun (srun too) forwards
the one it gets to its children a moment later: a repeat within ``REPEAT_WINDOW_S`` of the first is taken as the
same request. A later one restores the default action and ends the process at once (the checkpoint being written,
if any, is left as a temporary file beside the previous one, which stays intact). DataLoader workers ignore both
signals (``ignore_stop_signals``, their ``worker_init_fn``): only the main process decides, and no worker dies
under it mid-epoch.
"""
import atexit
import logging
import multiprocessing
import os
import shlex
import sys
import signal
import threading
import time
from typing import Dict, Optional, Sequence

import torch
import torch.distributed as dist

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
REPEAT_WINDOW_S = 2.0  # torchrun / srun forward a signal within milliseconds; a person's second Ctrl-C comes later


def exit_code(signum: int) -> int:
    """The shell's status for a process ended by ``signum``: 143 for SIGTERM, 130 for SIGINT."""
    return 128 + int(signum)


def _kill_left_workers() -> None:
    """At exit, SIGKILL the daemonic children still alive (DataLoader workers whose iterator was never shut down,
    e.g. one an exception's traceback still holds). multiprocessing's own exit handler ends daemonic children with
    SIGTERM, which these workers ignore (``ignore_stop_signals``), and then joins them: without this it would wait
    forever. Registered after multiprocessing's handler, so it runs before it (atexit runs last-in first-out)."""
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()


atexit.register(_kill_left_workers)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: the worker ignores SIGTERM and SIGINT, which reach it with the rest of its
    process group (SLURM signals every process of a step, a terminal every process of its foreground group). torch
    workers otherwise die on SIGTERM (its C handler) and leave on SIGINT (KeyboardInterrupt), and the main process
    then fails with 'DataLoader worker exited unexpectedly' instead of finishing its step. A worker still ends
    with its main process (torch's watchdog)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


class TrainingStopped(Exception):
    """The run stopped at a step boundary on a signal. ``checkpoint``: the file holding every completed step (None
    when this run writes none: --logs none); ``epoch``, ``step``: the completed epochs and optimizer steps in it;
    ``exit_code``: 128 + the signal number."""

    def __init__(self, signum: int, checkpoint: Optional[str], epoch: int, step: int):
        self.signum, self.checkpoint, self.epoch, self.step = int(signum), checkpoint, epoch, step
        self.exit_code = exit_code(signum)
        super().__init__(f"stopped on {signal.Signals(self.signum).name} at epoch {epoch} step {step}")

    def report(self, prog: str, flags: Optional[Sequence[str]], name: str) -> str:
        """What the command prints when it stops: where the work is, the resume command, the exit status and the
        SLURM requeue hint. ``flags``: the command line's flags (None when unknown), ``name``: the run's --name."""
        signame = signal.Signals(self.signum).name
        if self.checkpoint is None:
            return (f"stopped on {signame} after step {self.step} (epoch {self.epoch}): no checkpoint written "
                    f"(--logs none); exit status {self.exit_code}")
        resume = (resume_command(prog, flags, name) if flags is not None
                  else f"{prog} <the same flags> --name {name} --resume latest")
        requeue = (f"in a SLURM batch script, requeue on it: [ $? -eq {self.exit_code} ] && scontrol requeue "
                   f"$SLURM_JOB_ID")
        if "TORCHELASTIC_RUN_ID" in os.environ:
            requeue += (" (torchrun itself exits 1 when signalled: under SLURM start one srun task per GPU "
                        "instead of torchrun)")
        return (f"stopped on {signame} after step {self.step} (epoch {self.epoch}); every completed step is in "
                f"{self.checkpoint}\n"
                f"resume with the same launcher (torchrun/srun) and: {resume}\n"
                f"exit status {self.exit_code} (128 + {signame}); {requeue}")


def resume_command(prog: str, flags: Sequence[str], name: str) -> str:
    """``prog flags`` (``python`` in ``prog`` spelt as this interpreter's path) without any --resume, with ``--name name`` (a generated name would differ next time) and
    ``--resume latest``, quoted for a POSIX shell."""
    kept, skip_value = [], False
    for flag in flags:
        if skip_value:
            skip_value = False
        elif flag == "--resume":
            skip_value = True
        elif not flag.startswith("--resume="):
            kept.append(flag)
    if not any(flag == "--name" or flag.startswith("--name=") for flag in kept):
        kept += ["--name", name]
    if prog.startswith("python "):  # the interpreter that ran this (a venv's python need not be on PATH)
        prog = shlex.quote(sys.executable) + prog[len("python"):]
    return " ".join([prog, shlex.join(kept + ["--resume", "latest"])])


class StopRequest:
    """SIGTERM/SIGINT handlers for the length of a ``with`` block (main thread only; elsewhere nothing is
    installed and signals keep their actions). ``requested``: the signal this process got (0: none);
    ``stopping``: the signal every process agreed to stop on at the last ``agreed`` call."""

    def __init__(self, rank: int = 0):
        self.rank = rank
        self.requested = 0
        self.stopping = 0
        self._first_at = 0.0
        self._owner = os.getpid()
        self._previous: Dict[int, object] = {}
        self._flag: Optional[torch.Tensor] = None

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handle) for signum in STOP_SIGNALS}
        else:
            logging.warning("training runs outside the main thread: SIGTERM/SIGINT end it without a checkpoint")
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            if signal.getsignal(signum) == self._handle:
                signal.signal(signum, previous)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        if os.getpid() != self._owner:  # a forked child (DataLoader worker) before its worker_init_fn ran
            return
        now = time.monotonic()
        if not self.requested:
            self.requested, self._first_at = signum, now
            # os.write, not logging or print: the handler may interrupt a write to the same stream
            os.write(2, (f"process {self.rank}: {signal.Signals(signum).name} received: stopping after the current "
                         f"step with a checkpoint; signal again (after {REPEAT_WINDOW_S:g} s) to abort at once "
                         f"without one\n").encode())
            return
        if now - self._first_at < REPEAT_WINDOW_S:
            return  # the launcher's forwarded copy of the same request
        for stop_signal in STOP_SIGNALS:
            signal.signal(stop_signal, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    def agreed(self, args) -> int:
        """Whether to stop at this step boundary, the same answer on every process: the highest signal number any
        process got (so SIGTERM wins over SIGINT), 0 to go on. Every process must call it at the same boundaries:
        one all-reduce (MAX) of one int32 on ``args.device`` when distributed."""
        if getattr(args, "distributed", False):
            if self._flag is None:
                self._flag = torch.zeros(1, dtype=torch.int32, device=args.device)
            self._flag.fill_(self.requested)
            dist.all_reduce(self._flag, op=dist.ReduceOp.MAX)
            self.stopping = int(self._flag.item())
        else:
            self.stopping = self.requested
        return self.stopping
