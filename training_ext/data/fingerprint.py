"""A fingerprint of a run's training data, stored with each checkpoint's data position: a mid-epoch resume on data
that changed (same size, other rows or order) would train some samples twice and others never, so it is refused
(training_ext.engine.checkpoint.check_resume_position), while a resume at an epoch boundary may start on new data.

What is fingerprinted, per source (each a SHA-256 digest, its first 16 bytes in hex; OpenSSL's SHA-256 runs on the
CPU's SHA instructions where there are some: twice blake2b's speed on the machines measured):
- CSV: the file's bytes. Hashing runs in a background thread started when the flag checks read the CSV
  (``start_file_digest``); hashlib releases the GIL on large buffers, so it overlaps parsing, model building and
  the first steps. It is joined when the digest is first needed: the first checkpoint, or the resume check.
- webdataset: the shard list in the pattern's order (it seeds the shard shuffle) with each local shard's size,
  from the stat of the shard listing (training_ext.data.shard_checks.shard_listing); remote shards by name only.
- folder: the (image path, caption lines) pairs the dataset reads, as listed when it was built; an image
  replaced by another of the same name is not seen.
- teacher cache (``--teacher-cache``): its header.json bytes and the sizes of its files.
Synthetic data has none (its size is in the data position already).
"""
import hashlib
import os
import threading
from typing import Callable, Dict, Optional

_CHUNK = 1 << 23  # 8 MiB reads: large enough that hashlib drops the GIL for each update


class _Digest:
    """hashlib's SHA-256, its hex digest cut to 32 characters (collisions do not matter here, only changes)."""

    def __init__(self):
        self._hash = hashlib.sha256()

    def update(self, data: bytes) -> None:
        self._hash.update(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()[:32]


class FileDigest:
    """The digest of a file's bytes, computed in a daemon thread from construction; ``value()`` joins it.
    An OSError while reading is raised by ``value()``."""

    def __init__(self, path: str):
        self.path = path
        self._digest: Optional[str] = None
        self._error: Optional[OSError] = None
        self._thread = threading.Thread(target=self._run, name=f"digest {os.path.basename(path)}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from training_ext.data.teacher_cache import file_sha256  # the project's one file hash
        try:
            self._digest = file_sha256(self.path, _CHUNK)[:32]  # as _Digest cuts it
        except OSError as error:
            self._error = error

    def value(self) -> str:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._digest


_file_digests: Dict[tuple, FileDigest] = {}


def start_file_digest(path: str) -> FileDigest:
    """The digest of ``path``, started now in the background unless it already was for the file as it is now
    (same absolute path, size and modification time)."""
    path = os.path.abspath(path)
    status = os.stat(path)
    key = (path, status.st_size, status.st_mtime_ns)
    if key not in _file_digests:
        _file_digests[key] = FileDigest(path)
    return _file_digests[key]


def digest_of(items) -> str:
    """The digest of the ``repr`` of each item in order (items of str / int / tuples of them)."""
    digest = _Digest()
    for item in items:
        digest.update(repr(item).encode("utf-8", "surrogateescape"))
        digest.update(b"\n")
    return digest.hexdigest()


class DataFingerprint:
    """Named parts (``train_data``, ``teacher_cache``), each a description of its source and a digest computed on
    first need. ``value()``: {part: {"source": description, "digest": hex}}, what a checkpoint stores."""

    def __init__(self):
        self._parts: Dict[str, tuple] = {}
        self._value: Optional[Dict[str, Dict[str, str]]] = None

    def add(self, name: str, source: str, digest: Callable[[], str]) -> None:
        self._parts[name] = (source, digest)

    def value(self) -> Dict[str, Dict[str, str]]:
        if self._value is None:
            self._value = {name: {"source": source, "digest": digest()}
                           for name, (source, digest) in self._parts.items()}
        return self._value


def _dataset_of(data):
    """The dataset a map-style DataInfo reads, under a teacher-cache wrapper (``.dataset``) if any."""
    dataset = getattr(data.dataloader, "dataset", None)
    return getattr(dataset, "dataset", dataset)


def _teacher_cache_digest(path: str) -> str:
    from training_ext.data.teacher_cache import HEADER_FILE
    with open(os.path.join(path, HEADER_FILE), "rb") as stream:
        header = stream.read()
    sizes = sorted((name, os.path.getsize(os.path.join(path, name))) for name in os.listdir(path)
                   if os.path.isfile(os.path.join(path, name)))
    return digest_of([header.hex(), *sizes])


def data_fingerprint(args, data, kind: str) -> DataFingerprint:
    """The fingerprint of ``args.train_data`` read as ``kind`` into ``data`` (a DataInfo of training_ext.data.
    loaders), and of ``args.teacher_cache`` when given. Digests are computed when ``value()`` first asks."""
    fingerprint = DataFingerprint()
    path = args.train_data
    if kind == "csv":
        digest = start_file_digest(path)
        fingerprint.add("train_data", f"--train-data {os.path.abspath(path)} (the CSV's bytes)", digest.value)
    elif kind == "webdataset" and getattr(data, "shard_listing", None) is not None:
        listing = data.shard_listing
        shards = [(os.path.basename(url), listing.sizes.get(url, -1)) for url in listing.urls]
        fingerprint.add("train_data", f"--train-data {path} (the shard list and sizes)",
                        lambda: digest_of(shards))
    elif kind == "folder":
        dataset = _dataset_of(data)
        root = getattr(dataset, "root", path)
        fingerprint.add("train_data", f"--train-data {os.path.abspath(root)} (the folder's image/caption pairs)",
                        lambda: digest_of((os.path.relpath(item.image, root), tuple(item.captions),
                                           tuple(item.lines)) for item in dataset.items))
    cache = getattr(args, "teacher_cache", None)
    if cache:
        fingerprint.add("teacher_cache", f"--teacher-cache {os.path.abspath(cache)}",
                        lambda: _teacher_cache_digest(cache))
    return fingerprint
