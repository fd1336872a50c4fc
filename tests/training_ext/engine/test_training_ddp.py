"""Gradients really are all-reduced: 2 processes (gloo, CPU) with batch B end with the weights of one process
with batch 2B, on every rank. Stage 1 is launched with torchrun (and its '--' separator), stage 2 the way SLURM
starts tasks (SLURM_PROCID / SLURM_NTASKS, read by open_clip_train's initialisation).

SGD with momentum keeps the update linear in the gradient (see test_training_accum.py).
"""
import pytest
import os
import subprocess
import sys

import torch

from support.processes import ROOT, free_port, process_env
from support.training_helpers import STUDENT, TEACHER, assert_state_dicts_close, base_args, save_stock_teacher, write_csv
from training_ext import main_context_finetune_rope, main_distill_rope

# starts subprocesses or runs a pipeline end to end
pytestmark = pytest.mark.slow

WORKER = os.path.join(ROOT, "tests", "support", "ddp_worker.py")
SGD = ["--opt", "timm/sgd", "--momentum", "0.9", "--lr", "0.05"]


def _check(processes, out_dir, single_state):
    for process in processes:
        output, _ = process.communicate(timeout=240)
        assert process.returncode == 0, output.decode()[-3000:]
    ranks = [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=True) for r in (0, 1)]
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key  # both ranks hold identical weights
    assert_state_dicts_close(ranks[0], single_state.model.state_dict())


def test_stage1_torchrun_two_processes_equal_one_process_on_combined_batch(tmp_path):
    teacher = save_stock_teacher(str(tmp_path / "teacher.pt"))
    train = write_csv(str(tmp_path / "train"), rows=16, images=False)
    flags = ["--model", STUDENT, "--teacher-model", TEACHER, "--pretrained", teacher, "--teacher-pretrained", teacher]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", WORKER,
               "distill", str(tmp_path), "--"] + flags + base_args(str(tmp_path / "ddp"), "ddp", train, extra=SGD)
    launched = subprocess.Popen(command, env=process_env(), cwd=str(tmp_path), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
    single = main_distill_rope.run(main_distill_rope.parse_args(
        flags + base_args(str(tmp_path / "one"), "one", train, batch_size=8, extra=SGD)))
    _check([launched], str(tmp_path), single)


def test_stage2_slurm_two_processes_equal_one_process_on_combined_batch(tmp_path):
    pretrained = save_stock_teacher(str(tmp_path / "teacher.pt"))
    train = write_csv(str(tmp_path / "train"), rows=16)
    # --gather-with-grad: each rank's loss sees the whole global batch with gradients, as one process would
    flags = ["--model", STUDENT, "--pretrained", pretrained, "--gather-with-grad", "--short-caption-weight", "0.3"]
    port = str(free_port())
    processes = [
        subprocess.Popen(
            [sys.executable, WORKER, "finetune", str(tmp_path)] + flags
            + base_args(str(tmp_path / "ddp"), "ddp", train, extra=SGD),
            env=process_env(SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank), SLURM_NTASKS="2",
                            MASTER_ADDR="127.0.0.1", MASTER_PORT=port),
            cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for rank in (0, 1)
    ]
    single = main_context_finetune_rope.run(main_context_finetune_rope.parse_args(
        flags + base_args(str(tmp_path / "one"), "one", train, batch_size=8, extra=SGD)))
    _check(processes, str(tmp_path), single)
