"""A resume continues at the next unseen sample of the epoch, under a new batch size too, or refuses before
training naming the flag that changed; the lr schedule follows the samples seen; a refused resume writes nothing.

A run is stopped mid-epoch by an exception from inside a step (as a kill would stop it: the step's update is lost,
the last mid-epoch checkpoint stays)."""
import hashlib
import os

import pytest
import torch

from support.shard_fixtures import write_shard
from support.training_helpers import STUDENT, TEACHER, base_args, checkpoint_state, long_caption, write_csv
from training_ext import main_distill_rope
from training_ext.data.loaders import ResumableDistributedSampler
from training_ext.engine import loop
from training_ext.engine.checkpoint import ResumeRefused, check_resume_position
from training_ext.engine.optim import schedule_step
from training_ext.stages import distill

ROWS = 40


class Killed(BaseException):
    """Stands for SIGKILL: nothing in the run catches it."""


@pytest.fixture
def recorder(monkeypatch):
    """Records the captions of every trained step (as CSV rows) and the schedule positions; ``kill_at`` makes the
    n-th loss computation of the next run die."""
    rows_of = {tuple(ids.tolist()): row for row, ids in
               enumerate(__import__("open_clip").get_tokenizer(STUDENT)([long_caption(i) for i in range(ROWS)]))}
    record = {"steps": [], "positions": [], "kill_at": None, "calls": 0}
    real_usable, real_losses, real_position = loop.usable_micro_batches, distill.distillation_losses, loop.schedule_step

    def usable(pending, args):
        batches, cut = real_usable(pending, args)
        record["steps"].append([rows_of[tuple(ids.tolist())] for batch in batches for ids in batch[0]])
        return batches, cut

    def losses(student, teacher, weights):
        record["calls"] += 1
        if record["calls"] == record["kill_at"]:
            record["steps"].pop()  # this step never completes
            raise Killed()
        return real_losses(student, teacher, weights)

    def position(samples_seen, global_batch):
        record["positions"].append(real_position(samples_seen, global_batch))
        return record["positions"][-1]

    monkeypatch.setattr(loop, "usable_micro_batches", usable)
    monkeypatch.setattr(distill, "distillation_losses", losses)
    monkeypatch.setattr(loop, "schedule_step", position)

    def run(argv, kill_at=None):
        record.update(steps=[], positions=[], kill_at=kill_at, calls=0)
        return main_distill_rope.run(main_distill_rope.parse_args(argv))

    record["run"] = run
    return record


def _argv(tmp_path, train, name, batch_size, extra=()):
    return ["--model", STUDENT, "--teacher-model", TEACHER] + base_args(
        str(tmp_path / "logs"), name, train, batch_size=batch_size, epochs=2,
        extra=["--save-every-n-steps", "5", *extra])


def _order(epoch, seed=0, rows=ROWS):
    generator = torch.Generator()
    generator.manual_seed(seed + epoch)
    return torch.randperm(rows, generator=generator).tolist()


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _killed_at_step_25(tmp_path, recorder, train):
    """Batch 2 over 40 rows (20 steps an epoch), checkpoints every 5 steps, killed during step 26."""
    with pytest.raises(Killed):
        recorder["run"](_argv(tmp_path, train, "run", 2), kill_at=26)
    checkpoints = tmp_path / "logs" / "run" / "checkpoints"
    saved = checkpoint_state(str(checkpoints / "epoch_latest.pt"))
    assert (saved["epoch"], saved["step"]) == (1, 25)
    assert saved["data_position"]["epoch_samples"] == 10 and saved["data_position"]["samples_seen"] == 50
    assert [row for step in recorder["steps"][20:] for row in step] == _order(1)[:10]
    return checkpoints


@pytest.mark.parametrize("batch_size", [4, pytest.param(1, marks=pytest.mark.slow),
                                        pytest.param(2, marks=pytest.mark.slow)])
def test_resume_with_another_batch_size_continues_at_the_next_unseen_sample(tmp_path, recorder, batch_size):
    train = write_csv(str(tmp_path / "train"), rows=ROWS, images=False)
    checkpoints = _killed_at_step_25(tmp_path, recorder, train)

    state = recorder["run"](_argv(tmp_path, train, "run", batch_size, ["--resume", "latest"]))
    remaining = (ROWS - 10) // batch_size
    trained = [row for step in recorder["steps"] for row in step]
    assert trained == _order(1)[10:10 + remaining * batch_size]  # each unseen sample once, in the epoch's order
    assert all(len(step) == batch_size for step in recorder["steps"])
    assert (state.epoch, state.step) == (2, 25 + remaining)
    # the schedule is where the samples are: 50 seen, in steps of this run's batch
    assert recorder["positions"] == [(50 + n * batch_size) / batch_size for n in range(remaining)]
    final = checkpoint_state(str(checkpoints / "epoch_2.pt"))
    assert (final["epoch"], final["step"]) == (2, 25 + remaining)
    assert final["data_position"]["samples_seen"] == 50 + remaining * batch_size
    assert final["data_position"]["batch_size"] == batch_size


def test_schedule_position_counts_samples_in_this_runs_steps():
    assert schedule_step(50, 2) == 25 and isinstance(schedule_step(50, 2), int)
    assert schedule_step(50, 4) == 12.5 and schedule_step(0, 8) == 0


def test_sampler_positions_are_a_prefix_of_the_epoch_order_for_any_layout():
    dataset = list(range(41))
    for start, world in ((0, 1), (10, 1), (10, 3), (7, 4), (41, 2)):
        shares = [list(ResumableDistributedSampler(dataset, world, rank, seed=5)) for rank in range(world)]
        for share, rank in zip(shares, range(world)):
            sampler = ResumableDistributedSampler(dataset, world, rank, seed=5)
            sampler.start_at(start)
            shares[rank] = list(sampler)
            assert len(sampler) == len(shares[rank])
        usable = (41 - start) // world * world
        together = [index for step in zip(*shares) for index in step]  # processes interleave within a batch
        assert together == _order(0, seed=5, rows=41)[start:start + usable]


@pytest.mark.slow
def test_old_checkpoint_without_data_position_resumes_from_its_step(tmp_path, recorder):
    train = write_csv(str(tmp_path / "train"), rows=ROWS, images=False)
    checkpoints = _killed_at_step_25(tmp_path, recorder, train)
    old = checkpoint_state(str(checkpoints / "epoch_latest.pt"))
    del old["data_position"]
    torch.save(old, str(checkpoints / "epoch_latest.pt"))
    state = recorder["run"](_argv(tmp_path, train, "run", 2, ["--resume", "latest"]))
    assert [row for step in recorder["steps"] for row in step] == _order(1)[10:]
    assert (state.epoch, state.step) == (2, 40)


def test_resume_refuses_a_changed_order_and_writes_nothing(tmp_path, recorder):
    train = write_csv(str(tmp_path / "train"), rows=ROWS, images=False)
    checkpoints = _killed_at_step_25(tmp_path, recorder, train)
    latest = str(checkpoints / "epoch_latest.pt")
    before = _sha(latest)
    with pytest.raises(ResumeRefused, match=r"cannot continue epoch 1 after its first 10 samples: --seed .*was 0, "
                                            r"now 1.*epoch_1\.pt"):
        recorder["run"](_argv(tmp_path, train, "run", 2, ["--resume", "latest", "--seed", "1"]))
    grown = write_csv(str(tmp_path / "grown"), rows=ROWS + 1, images=False)
    with pytest.raises(ResumeRefused, match=r"the training data .* was 40, now 41"):
        recorder["run"](_argv(tmp_path, grown, "run", 2, ["--resume", "latest"]))
    assert recorder["steps"] == [] and _sha(latest) == before
    assert not os.path.exists(checkpoints / "epoch_2.pt")


def test_webdataset_resume_refuses_a_changed_batch_layout_and_writes_nothing(tmp_path, recorder):
    samples = [(f"{i:04d}", {"txt": long_caption(i).encode()}) for i in range(ROWS)]
    write_shard(tmp_path / "shard-0.tar", samples[:20])
    write_shard(tmp_path / "shard-1.tar", samples[20:])
    shards = str(tmp_path / "shard-{0..1}.tar")

    def argv(batch_size, *extra):
        return ["--model", STUDENT, "--teacher-model", TEACHER] + base_args(
            str(tmp_path / "logs"), "wds", batch_size=batch_size, epochs=1,
            extra=["--train-data", shards, "--dataset-type", "webdataset", "--train-num-samples", str(ROWS),
                   "--save-every-n-steps", "5", *extra])

    with pytest.raises(Killed):
        recorder["run"](argv(2), kill_at=13)
    latest = tmp_path / "logs" / "wds" / "checkpoints" / "epoch_latest.pt"
    assert checkpoint_state(str(latest))["data_position"]["epoch_samples"] == 20
    before = _sha(latest)
    for flags, message in ((argv(4, "--resume", "latest"), r"--batch-size was 2, now 4"),
                           (argv(2, "--resume", "latest", "--accum-freq", "2"), r"--accum-freq was 1, now 2")):
        with pytest.raises(ResumeRefused, match=rf"epoch 0 after its first 20 samples: {message} \(a webdataset "
                                                r"stream cannot be resumed at a given sample\)"):
            recorder["run"](flags)
        assert _sha(latest) == before and recorder["steps"] == []
    state = recorder["run"](argv(2, "--resume", "latest"))  # unchanged flags: the epoch's remaining 10 steps
    assert (state.epoch, state.step) == (1, 20) and len(recorder["steps"]) == 10


def test_check_resume_position_allows_any_change_at_an_epoch_boundary():
    layout = {"dataset_type": "webdataset", "seed": 0, "batch_size": 2, "accum_freq": 1, "world_size": 1,
              "workers": 0, "epoch_size": 40, "sample_exact": False}
    check_resume_position({"epoch_samples": 0, **layout}, {**layout, "batch_size": 8, "seed": 3}, 1, "ckpt")
    check_resume_position({"epoch_samples": 4, **layout, "sample_exact": True},
                          {**layout, "sample_exact": True, "batch_size": 8, "world_size": 4}, 1, "ckpt")
    with pytest.raises(ResumeRefused, match=r"the number of processes .* was 1, now 4"):
        check_resume_position({"epoch_samples": 4, **layout}, {**layout, "world_size": 4}, 1, "ckpt")
