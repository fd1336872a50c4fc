import os

import pytest
import torch

# Tests are CPU-only and tiny: one thread avoids oversubscribing the 2-core CI machine when tests spawn
# subprocesses, and makes float reductions reproducible.
torch.set_num_threads(1)
os.environ.setdefault("WANDB_MODE", "offline")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
