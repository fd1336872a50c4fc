"""Checkpoints: atomic writes, `--resume latest`, and the non-finite-loss guard that protects them.

A checkpoint is open_clip_train's dict {'epoch', 'step', 'name', 'state_dict', 'optimizer', 'scaler'} plus
'model_cfg' (the trained model's open_clip config, checked by open_clip_ext's loader) and 'data_position'. 'epoch'
counts completed epochs and 'step' completed optimizer steps. 'data_position' says where in the data the run
stands, in samples, with the flags that define that position (``data_position``): a mid-epoch checkpoint resumes
at sample 'epoch_samples' of epoch 'epoch''s order, and the learning-rate schedule at 'samples_seen'. The
state_dict is the whole trained model (text and vision tower), so ``open_clip.create_model(name, pretrained=path)``
loads it directly.

A write the file system refuses (disk full, quota) is CheckpointWriteError naming the file, the cause, the free space
and the bytes written, and leaves the previous checkpoint as it was; a --resume file cut short or not written by
torch.save is refused from its zip directory alone (``require_checkpoint_file``), before any model is built.
"""
import errno
import glob
import logging
import os
import pickle
import re
import shutil
import tempfile
import zipfile
from typing import Dict, List, Optional

import torch
import torch.distributed as dist

from open_clip_ext.convert import CheckpointError, weights_file_problem
from open_clip_ext.state_dicts import strip_module_prefix

from training_ext.common.file_io import atomic_open

LATEST_NAME = "epoch_latest.pt"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite: the run stops before the bad update reaches weights or checkpoints."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (disk full, quota, I/O error); the message names the file, the cause, the
    free space and the bytes written. The temporary file is removed and the previous checkpoint is untouched."""


class _CountingWriter:
    """The file object torch.save writes through: counts the bytes handed to it and keeps the OSError a write
    raised, which torch reports only as 'unexpected pos N vs M'."""

    def __init__(self, stream):
        self.stream, self.written, self.error = stream, 0, None

    def write(self, data) -> int:
        try:
            count = self.stream.write(data)
        except OSError as error:
            self.error = error
            raise
        self.written += count
        return count

    def flush(self) -> None:
        self.stream.flush()


def write_atomically(obj, path: str) -> None:
    """torch.save to a temporary file in the same folder, fsync, then os.replace: a reader (or a kill) never
    sees a half-written checkpoint. Raises CheckpointWriteError when the file system refuses the write (the
    temporary file is removed, ``path`` keeps its previous content)."""
    writer = None
    try:
        with atomic_open(path, "wb") as stream:
            writer = _CountingWriter(stream)
            torch.save(obj, writer)
            stream.flush()
            os.fsync(stream.fileno())
    except (OSError, RuntimeError) as error:
        cause = error if isinstance(error, OSError) else writer.error if writer is not None else None
        if cause is None:  # not the file system (an object torch cannot save): torch's own message says what
            raise
        raise CheckpointWriteError(write_failure_message(path, cause, _tensor_bytes(obj),
                                                         writer.written if writer else 0)) from None


def write_failure_message(path: str, cause: OSError, size: int, written: Optional[int] = None) -> str:
    """One line: the file, the cause (with the free space when the disk or quota is full), the checkpoint's size
    and the bytes written before the failure (when known), and that nothing earlier was lost."""
    folder = os.path.dirname(os.path.abspath(path))
    why = cause.strerror or str(cause)
    if cause.errno in (errno.ENOSPC, errno.EDQUOT):
        why = f"{why} ({_size(shutil.disk_usage(folder).free)} free in {folder})"
    progress = (f"{_size(written)} of about {_size(size)} written" if written is not None
                else f"{_size(size)} to copy")
    kept = (f"the previous {os.path.basename(path)} is untouched" if os.path.exists(path)
            else f"no earlier {os.path.basename(path)} existed")
    return (f"cannot write checkpoint {path}: {why} ({progress}); the partial file was removed and {kept}. "
            f"Free space (or give --logs a disk with room), then continue with --resume latest")


def _tensor_bytes(obj) -> int:
    """Bytes of the tensors in a nested checkpoint dict: about the size torch.save writes."""
    if isinstance(obj, torch.Tensor):
        return obj.nelement() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(value) for value in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(value) for value in obj)
    return 0


def _size(count: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.1f} {unit}" if unit != "bytes" else f"{count} bytes"
        count /= 1024


def publish_copy(source: str, path: str) -> None:
    """Give an already-written checkpoint a second name atomically (hard link when possible, else a copy).
    Raises CheckpointWriteError when the copy cannot be written (its partial file removed)."""
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    os.close(handle)
    os.remove(temporary)
    try:
        try:
            os.link(source, temporary)
        except OSError:
            shutil.copyfile(source, temporary)
        os.replace(temporary, path)
    except OSError as error:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise CheckpointWriteError(write_failure_message(path, error, os.path.getsize(source))) from None


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


def other_checkpoints(path: str) -> List[str]:
    """The other checkpoints (``*.pt``) beside ``path`` that look whole, newest first."""
    folder = os.path.dirname(os.path.abspath(path))
    found = [p for p in glob.glob(os.path.join(folder, "*.pt"))
             if not os.path.samefile(p, path) and weights_file_problem(p) is None]
    return sorted(found, key=os.path.getmtime, reverse=True)


def unreadable_checkpoint_message(path: str, problem: str, resume_latest: bool = False) -> str:
    """One line: the --resume file, that it is truncated or not a torch checkpoint and why, and the fix: the
    whole checkpoints beside it (``resume_latest``: it is the one --resume latest chose in the run's folder)."""
    others = [os.path.basename(p) for p in other_checkpoints(path)]
    where = f"--resume latest: {path}" if resume_latest else f"--resume {path}"
    if not others:
        fix = "no other checkpoint lies beside it: " + ("move it away to start afresh" if resume_latest
                                                        else "copy it again, or start without --resume")
    elif resume_latest:
        fix = (f"move it away and --resume latest takes the newest of the checkpoints beside it "
               f"({', '.join(others[:4])})")
    else:
        fix = f"the checkpoints beside it, newest first: {', '.join(others[:4])}; pass one to --resume"
    return f"{where}: truncated or not a torch checkpoint ({problem}); {fix}"


def require_checkpoint_file(path: str, resume_latest: bool = False) -> None:
    """Raise CheckpointError (``unreadable_checkpoint_message``) when ``open_clip_ext.convert.weights_file_problem`` finds one."""
    problem = weights_file_problem(path)
    if problem:
        raise CheckpointError(unreadable_checkpoint_message(path, problem, resume_latest))


def read_training_state(path: str) -> dict:
    """Load a training checkpoint (tensors and plain containers only: weights_only). Raises CheckpointError naming
    the file when torch cannot read it or it lacks a training state."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(unreadable_checkpoint_message(path, f"torch.load: {reason}")) from None
    missing = [key for key in ("epoch", "state_dict", "optimizer") if key not in state]
    if missing:
        raise CheckpointError(f"--resume {path}: not a training checkpoint of this project: no "
                              f"{', '.join(missing)}")
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


def _fingerprint(layout: Dict) -> Optional[Dict]:
    """The layout's data fingerprint as stored ({part: {"source", "digest"}}), computing it if need be
    (training_ext.data.fingerprint.DataFingerprint); None when there is none."""
    fingerprint = layout.get("data_fingerprint")
    return fingerprint.value() if hasattr(fingerprint, "value") else fingerprint


def data_position(epoch_samples: int, samples_seen: int, layout: Dict) -> dict:
    """What a checkpoint stores about the data: samples of the current epoch already trained (a prefix of its
    order), samples trained since the run began (the lr schedule's position), and ``layout``: the flags of
    _POSITION_FLAGS, 'sample_exact' (whether the source can resume at any sample) and 'data_fingerprint'
    (digests of the training data and teacher cache, training_ext.data.fingerprint)."""
    position = {"epoch_samples": int(epoch_samples), "samples_seen": int(samples_seen), **layout}
    if "data_fingerprint" in layout:
        position["data_fingerprint"] = _fingerprint(layout)
    return position


def _changed_data(saved: Dict, layout: Dict) -> List[str]:
    """The parts of the data whose digest differs from the checkpoint's, described; [] when none did or the
    checkpoint has no fingerprint."""
    before = saved.get("data_fingerprint")
    if not before or "data_fingerprint" not in layout:
        return []
    now = _fingerprint(layout)
    changed = []
    for part in sorted(set(before) | set(now)):
        old, new = before.get(part), now.get(part)
        if old is None or new is None:
            changed.append(f"{(old or new)['source']} ({'no longer used' if new is None else 'not used before'})")
        elif old["digest"] != new["digest"]:
            changed.append(new["source"] + (f", was {old['source']}" if old["source"] != new["source"] else ""))
    return changed


def _epoch_start(epoch: int) -> str:
    """Where epoch ``epoch`` (counting from 0) can start afresh: the epoch-end checkpoint before it (``epoch`` counts
    the completed epochs, so epoch_<epoch>.pt), or a new run for the first epoch, which has none."""
    return (f"resume from the epoch-end checkpoint epoch_{epoch}.pt" if epoch else
            "start the run afresh (another --name, or this one's checkpoints moved away): epoch 0 has no epoch-end "
            "checkpoint before it")


def check_resume_position(saved: Dict, layout: Dict, epoch: int, where: str) -> None:
    """Refuse (ResumeRefused) a mid-epoch resume whose flags would not continue the saved epoch at its next unseen
    sample: a changed order (data, seed) for any source; for a source that cannot resume sample-exactly, also a
    changed batch size, --accum-freq, process or worker count; training data or teacher cache whose fingerprint
    differs from the checkpoint's. At an epoch boundary every flag and the data may change (the change is logged).
    A checkpoint without a fingerprint (older) is checked by the data's size only (logged)."""
    if "data_fingerprint" in layout and "data_fingerprint" not in saved:
        logging.info(f"--resume {where}: the checkpoint has no data fingerprint (written before they were stored): "
                     f"a change of the training data is seen only when it changes the number of samples")
    if not saved.get("epoch_samples"):
        changed = _changed_data(saved, layout)
        if changed:
            logging.warning(f"--resume {where}: the data changed since the checkpoint ({'; '.join(changed)}); "
                            f"epoch {epoch} starts on the new data")
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
            f"{flag} was {saved[key]!r}, now {layout[key]!r} ({reason}). Resume with the old value, or "
            f"{_epoch_start(epoch)}, where it may change")
    changed = _changed_data(saved, layout)
    if changed:
        raise ResumeRefused(
            f"--resume {where}: cannot continue epoch {epoch} after its first {saved['epoch_samples']} samples: the "
            f"data changed since the checkpoint: {'; '.join(changed)} (the same positions would now hold other "
            f"samples: some would train twice, others never). Restore the data the run started with, or "
            f"{_epoch_start(epoch)}, where new data may start")
