"""engine.preemption's handlers in a process of their own (the last check ends it by the default action).

usage: python tests/support/signal_check.py
Prints one line per check: 'requested 15 after a repeat' (a second SIGTERM right after the first is the same
request), 'worker served 8 batches' (a DataLoader worker given ignore_stop_signals survives SIGTERM and SIGINT
while the main process holds a stop request), 'aborting' (then a SIGINT after the repeat window: the process ends
at once with status -SIGINT, so nothing after it is printed).
"""
import os
import signal
import sys
import time

import torch
from torch.utils.data import DataLoader, Dataset

from training_ext.engine import preemption


class _SlowPids(Dataset):
    """Item i after a short pause, as the worker's pid (so the main process can signal that worker)."""

    def __len__(self):
        return 8

    def __getitem__(self, index):
        time.sleep(0.05)
        return torch.tensor(os.getpid())


if __name__ == "__main__":
    preemption.REPEAT_WINDOW_S = 1.0
    with preemption.StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # within the window: the same request
        print(f"requested {stop.requested} after a repeat", flush=True)
        loader = DataLoader(_SlowPids(), batch_size=1, num_workers=1, worker_init_fn=preemption.ignore_stop_signals)
        served = 0
        for batch in loader:
            if served == 1:
                os.kill(int(batch[0]), signal.SIGTERM)
                os.kill(int(batch[0]), signal.SIGINT)
            served += 1
        print(f"worker served {served} batches", flush=True)
        time.sleep(preemption.REPEAT_WINDOW_S)
        print("aborting", flush=True)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
        print("still running after the second signal", flush=True)
    sys.exit(3)
