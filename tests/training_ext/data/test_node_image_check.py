"""Image files are checked once per node, not once per rank: 2 gloo processes on one node (torchrun) make one
check between them and both get its result; placed on two "nodes" (SLURM_LOCALID 0 each) each checks.
--csv-skip-missing-images keeps its meaning on every rank."""
import json
import os
import subprocess
import sys

import pytest

from support.processes import ROOT, free_port, process_env
from support.training_helpers import write_csv

pytestmark = pytest.mark.slow  # starts subprocesses

WORKER = os.path.join(ROOT, "tests", "support", "node_check_worker.py")


def _results(processes, out_dir):
    for process in processes:
        output, _ = process.communicate(timeout=180)
        assert process.returncode == 0, output.decode()[-3000:]
    return [json.load(open(os.path.join(out_dir, f"rank{r}.json"), encoding="utf-8")) for r in (0, 1)]


def _torchrun(out_dir, csv, *extra):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", WORKER,
               str(out_dir), csv, *extra]
    return [subprocess.Popen(command, env=process_env(), cwd=str(out_dir), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)]


def test_one_node_checks_once_and_shares_the_result(tmp_path):
    csv = write_csv(str(tmp_path / "data"), rows=6)
    first, second = _results(_torchrun(tmp_path, csv), tmp_path)
    assert first["checked"] == 6 and second["checked"] == 0
    assert first["rows"] == second["rows"] == list(range(6))


def test_missing_images_stop_or_are_skipped_and_counted_on_every_rank(tmp_path):
    csv = write_csv(str(tmp_path / "data"), rows=6)
    os.remove(os.path.join(str(tmp_path / "data"), "images", "2.png"))
    first, second = _results(_torchrun(tmp_path, csv), tmp_path)
    assert "image file not found" in first["error"] and first["error"] == second["error"]
    assert "line 4, data row 2" in first["error"] and "--csv-skip-missing-images" in first["error"]
    first, second = _results(_torchrun(tmp_path, csv, "--skip-missing"), tmp_path)
    assert first["rows"] == second["rows"] == [0, 1, 3, 4, 5]
    assert first["skipped"] == second["skipped"] == {"no image": 1}
    assert first["checked"] + second["checked"] == 6


def test_two_nodes_check_once_each(tmp_path):
    csv = write_csv(str(tmp_path / "data"), rows=6)
    port = str(free_port())
    processes = [subprocess.Popen([sys.executable, WORKER, str(tmp_path), csv],
                                  env=process_env(SLURM_PROCID=str(rank), SLURM_LOCALID="0", SLURM_NTASKS="2",
                                           MASTER_ADDR="127.0.0.1", MASTER_PORT=port),
                                  cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                 for rank in (0, 1)]
    first, second = _results(processes, tmp_path)
    assert first["checked"] == second["checked"] == 6
