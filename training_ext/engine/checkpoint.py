"""Checkpoints: atomic writes, `--resume latest`, and the non-finite-loss guard that protects them.

A checkpoint is open_clip_train's dict {'epoch', 'step', 'name', 'state_dict', 'optimizer', 'scaler'} plus
'model_cfg' (the trained model's open_clip config, checked by open_clip_ext's loader) and 'data_position'. 'epoch'
counts completed epochs and 'step' completed optimizer steps. 'data_position' says where in the data the run
stands, in samples, with the flags that define that position (``data_position``): a mid-epoch checkpoint resumes
at sample 'epoch_samples' of epoch 'epoch''s order, and the learning-rate schedule at 'samples_seen'. The
state_dict is the whole trained model (text and vision tower), so ``open_clip.create_model(name, pretrained=path)``
loads it directly.
"""
import glob
import logging
import os
import re
import shutil
import tempfile
from typing import Dict, Optional

import torch
import torch.distributed as dist

from open_clip_ext.state_dicts import strip_module_prefix

from training_ext.common.file_io import atomic_open

LATEST_NAME = "epoch_latest.pt"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite: the run stops before the bad update reaches weights or checkpoints."""


def write_atomically(obj, path: str) -> None:
    """torch.save to a temporary file in the same folder, fsync, then os.replace: a reader (or a kill) never
    sees a half-written checkpoint."""
    with atomic_open(path, "wb") as stream:
        torch.save(obj, stream)
        stream.flush()
        os.fsync(stream.fileno())


def publish_copy(source: str, path: str) -> None:
    """Give an already-written checkpoint a second name atomically (hard link when possible, else a copy)."""
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    os.close(handle)
    os.remove(temporary)
    try:
        os.link(source, temporary)
    except OSError:
        shutil.copyfile(source, temporary)
    os.replace(temporary, path)


def checkpoint_dict(model, optimizer, scaler, epoch: int, step: int, name: str, model_cfg: Optional[dict],
                    data_position: Optional[dict] = None) -> dict:
    state = {
        "epoch": epoch,
        "step": step,
        "name": name,
        "state_dict": model.state_dict(),
        "optimizer": optimizer.state_dict(),
    }
    if data_position is not None:
        state["data_position"] = data_position
    if scaler.is_enabled():  # a disabled scaler's state is empty, and an enabled one refuses to load that
        state["scaler"] = scaler.state_dict()
    if model_cfg is not None:
        state["model_cfg"] = model_cfg
    return state


def save_training_state(state: dict, checkpoint_dir: str, end_of_epoch: bool, total_epochs: int,
                        save_frequency: int, delete_previous: bool) -> str:
    """Write epoch_latest.pt always; at epoch ends also epoch_<n>.pt as open_clip_train's flags ask.

    Returns the path of the newest checkpoint.
    """
    latest = os.path.join(checkpoint_dir, LATEST_NAME)
    write_atomically(state, latest)
    epoch = state["epoch"]
    if end_of_epoch and (epoch == total_epochs or (save_frequency > 0 and epoch % save_frequency == 0)):
        publish_copy(latest, os.path.join(checkpoint_dir, f"epoch_{epoch}.pt"))
        previous = os.path.join(checkpoint_dir, f"epoch_{epoch - 1}.pt")
        if delete_previous and os.path.exists(previous):
            os.remove(previous)
    return latest


def _epoch_number(path: str) -> int:
    match = re.fullmatch(r"epoch_(\d+)\.pt", os.path.basename(path))
    return int(match.group(1)) if match else -1


def find_latest_checkpoint(checkpoint_dir: str) -> Optional[str]:
    """epoch_latest.pt (rewritten at every save, so the newest) or else the highest epoch_<n>.pt."""
    latest = os.path.join(checkpoint_dir, LATEST_NAME)
    if os.path.isfile(latest):
        return latest
    numbered = [p for p in glob.glob(os.path.join(checkpoint_dir, "epoch_*.pt")) if _epoch_number(p) >= 0]
    return max(numbered, key=_epoch_number) if numbered else None


def read_training_state(path: str) -> dict:
    """Load a training checkpoint (tensors and plain containers only: weights_only)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing = [key for key in ("epoch", "state_dict", "optimizer") if key not in state]
    if missing:
        raise ValueError(f"{path} is not a training checkpoint of this project: no {', '.join(missing)}")
    state["state_dict"] = strip_module_prefix(state["state_dict"])
    return state


def restore_training_state(state: dict, model, optimizer, scaler) -> None:
    """Model (strict), optimizer and scaler from a checkpoint of the same run."""
    model.load_state_dict(state["state_dict"], strict=True)
    optimizer.load_state_dict(state["optimizer"])
    if scaler.is_enabled() and "scaler" in state:
        scaler.load_state_dict(state["scaler"])


def ensure_finite(loss: torch.Tensor, distributed: bool) -> None:
    """Stop every process when any process's loss is NaN/inf, before backward (so no rank waits in an all-reduce
    the others skip) and before the optimizer step (so no bad update is ever saved). The epoch loop adds where
    it happened and which checkpoint is still good."""
    finite = torch.isfinite(loss.detach()).all().float().reshape(1)
    if distributed:
        finite = finite.to(loss.device)
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    if finite.item() < 1:
        raise NonFiniteLossError(f"non-finite loss ({loss.detach().float().item()} on this process)")


# --------------------------------------------------------------------------------------- data positions

class ResumeRefused(SystemExit):
    """--resume cannot continue the checkpoint's epoch at its next unseen sample under this run's flags. Raised
    before any training step, so no checkpoint is written; the message names the flag and its old and new values."""


# The flags that define where a data position points, how a user sets each, and whether a source that resumes
# sample-exactly (CSV, folder, synthetic: a seeded permutation read from any position) accepts a change mid-epoch.
# A webdataset stream cannot be rewound, so it accepts none mid-epoch.
_POSITION_FLAGS = {
    "dataset_type": ("--dataset-type / --train-data", False),
    "seed": ("--seed (it fixes each epoch's order)", False),
    "batch_size": ("--batch-size", True),
    "accum_freq": ("--accum-freq", True),
    "world_size": ("the number of processes (torchrun --nproc_per_node x nodes)", True),
    "workers": ("--workers (webdataset splits shards by worker)", True),
    # last: a webdataset epoch's size follows the flags above, which are named first
    "epoch_size": ("the training data (samples an epoch is drawn from: --train-data, --train-num-samples)", False),
}


def data_position(epoch_samples: int, samples_seen: int, layout: Dict) -> dict:
    """What a checkpoint stores about the data: samples of the current epoch already trained (a prefix of its
    order), samples trained since the run began (the lr schedule's position), and ``layout``: the flags of
    _POSITION_FLAGS plus 'sample_exact' (whether the source can resume at any sample)."""
    return {"epoch_samples": int(epoch_samples), "samples_seen": int(samples_seen), **layout}


def check_resume_position(saved: Dict, layout: Dict, epoch: int, where: str) -> None:
    """Refuse (ResumeRefused) a mid-epoch resume whose flags would not continue the saved epoch at its next unseen
    sample: a changed order (data, seed) for any source; for a source that cannot resume sample-exactly, also a
    changed batch size, --accum-freq, process or worker count. At an epoch boundary every flag may change."""
    if not saved.get("epoch_samples"):
        return
    for key, (flag, exact_may_change) in _POSITION_FLAGS.items():
        if key not in saved or key not in layout or saved[key] == layout[key]:
            continue
        if exact_may_change and layout.get("sample_exact"):
            continue
        reason = ("a webdataset stream cannot be resumed at a given sample" if exact_may_change
                  else "the epoch's order would change")
        raise ResumeRefused(
            f"--resume {where}: cannot continue epoch {epoch} after its first {saved['epoch_samples']} samples: "
            f"{flag} was {saved[key]!r}, now {layout[key]!r} ({reason}). Resume with the old value, or from an "
            f"epoch-end checkpoint (epoch_{epoch}.pt), where it may change")
