"""Resumable writer of webdataset shards from a sequence of `Sample`s.

Layout (what open_clip_train's webdataset pipeline reads):
- `<prefix>-000000.tar`, `<prefix>-000001.tar`, ... listed by the brace pattern `<prefix>-{000000..00NNNN}.tar`;
- each sample is `<key>.<jpg|png|webp>` (the original bytes when the format is one open_clip decodes, else
  re-encoded to PNG), `<key>.txt` (long caption), `<key>.short.txt` (short caption) and `<key>.json`
  (metadata). Keys are the sample's input index, zero padded: they hold no dot, because webdataset splits a
  member name into key and extension at the first dot;
- `sizes.json` next to the shards, {shard file name: sample count}: open_clip_train's `get_dataset_size`
  sums it over the shards named in `--train-data`, so `--train-num-samples` can be left out. Several
  prefixes may share one folder and one sizes.json;
- `<prefix>_stats.json`: pattern, counts per shard, total, completeness, and the digest of each shard's input;
- `<prefix>_skipped.tsv`: samples whose image was missing or unreadable (reported, never silently dropped).

Shard n always holds input samples [n * samples_per_shard, (n + 1) * samples_per_shard) minus the skipped
ones, so a re-run knows where every shard starts without opening earlier ones. A shard is written to
`<name>.tmp` and renamed when complete; a re-run keeps every complete shard whose recorded input digest
matches, deletes leftover `.tmp` files, and rewrites the rest. Tar members carry fixed metadata (mtime 0,
uid 0), so a resumed pack is byte-identical to an uninterrupted one.
"""
import hashlib
import io
import itertools
import json
import os
import re
import tarfile
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple

from PIL import Image

from training_ext.common.file_io import read_json_or, write_json, write_tsv
from training_ext.data.skips import IMAGE_ERRORS
from training_ext.prep.sources import Sample

SIZES_FILE = "sizes.json"  # the name open_clip_train's get_dataset_size looks for
SHARD_DIGITS = 6
# PIL format -> extension kept as is; open_clip_train's pipeline decodes "jpg;png;jpeg;webp"
NATIVE_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
SKIPPED_COLUMNS = ("index", "source_id", "path", "reason")


def shard_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index:0{SHARD_DIGITS}d}.tar"


def shard_pattern(prefix: str, num_shards: int) -> str:
    """The brace-expandable list of all shards, e.g. `train-{000000..000123}.tar`."""
    last = max(num_shards - 1, 0)
    return f"{prefix}-{{{0:0{SHARD_DIGITS}d}..{last:0{SHARD_DIGITS}d}}}.tar"


def stats_path(out_dir: str, prefix: str) -> str:
    return os.path.join(out_dir, f"{prefix}_stats.json")


def skipped_path(out_dir: str, prefix: str) -> str:
    return os.path.join(out_dir, f"{prefix}_skipped.tsv")


def sample_key(index: int) -> str:
    return f"{index:09d}"


@dataclass
class PackResult:
    out_dir: str
    prefix: str
    pattern: str             # brace pattern of all shards, relative to out_dir
    shard_sizes: Dict[str, int]
    skipped: List[dict]      # {"index", "source_id", "path", "reason"} per sample not written
    reused_shards: int       # complete shards kept from an earlier run
    stale_shards: List[str]  # shard files beyond the end of this input, left from an earlier run

    @property
    def total_samples(self) -> int:
        return sum(self.shard_sizes.values())

    @property
    def num_shards(self) -> int:
        return len(self.shard_sizes)


# ------------------------------------------------------------------------------------- one sample

def encode_image(path: str, verify: bool = False) -> Tuple[str, bytes, Tuple[int, int]]:
    """(extension, bytes, (width, height)) of an image: the file's own bytes for JPEG/PNG/WEBP (the extension
    follows the content, not the file name), a PNG re-encoding otherwise. `verify` decodes every pixel
    to catch truncated files; by default only the header is read."""
    with open(path, "rb") as handle:
        data = handle.read()
    with Image.open(io.BytesIO(data)) as image:
        if verify:
            image.load()
        size = image.size
        if image.format in NATIVE_FORMATS:
            return NATIVE_FORMATS[image.format], data, size
        buffer = io.BytesIO()
        image.convert("RGBA" if "A" in image.getbands() else "RGB").save(buffer, format="PNG")
        return "png", buffer.getvalue(), size


def sample_metadata(index: int, sample: Sample, image_format: str, size: Tuple[int, int]) -> dict:
    return {
        **dict(sample.extra),
        "key": sample_key(index),
        "index": index,
        "source_id": sample.source_id,
        "original_path": sample.image_path,
        "image_format": image_format,
        "width": size[0],
        "height": size[1],
        "caption_chars": len(sample.caption),
        "caption_words": len(sample.caption.split()),
        "short_caption_chars": len(sample.short_caption),
    }


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    # fixed metadata: the same input gives the same bytes, whenever and however often it is packed
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _sample_members(index: int, sample: Sample, verify: bool) -> List[Tuple[str, bytes]]:
    extension, image_bytes, size = encode_image(sample.image_path, verify)
    key = sample_key(index)
    metadata = sample_metadata(index, sample, extension, size)
    return [
        (f"{key}.{extension}", image_bytes),
        (f"{key}.txt", sample.caption.encode("utf-8")),
        (f"{key}.short.txt", sample.short_caption.encode("utf-8")),
        (f"{key}.json", json.dumps(metadata, sort_keys=True, ensure_ascii=False).encode("utf-8")),
    ]


# -------------------------------------------------------------------------------------- one shard

_IMAGE_ERRORS = IMAGE_ERRORS  # what a bad image raises, as training counts it


def write_shard(path: str, chunk: List[Tuple[int, Sample]], verify: bool = False, on_sample=None) -> dict:
    """Write one shard atomically (`<path>.tmp`, then rename). Returns {"count", "skipped"}."""
    tmp_path = path + ".tmp"
    count, skipped = 0, []
    with open(tmp_path, "wb") as handle:
        with tarfile.open(fileobj=handle, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for index, sample in chunk:
                try:
                    members = _sample_members(index, sample, verify)
                except _IMAGE_ERRORS as error:
                    reason = "missing" if isinstance(error, FileNotFoundError) else f"unreadable: {error}"
                    skipped.append({"index": index, "source_id": sample.source_id,
                                    "path": sample.image_path, "reason": reason})
                else:
                    for name, data in members:
                        _add_member(tar, name, data)
                    count += 1
                if on_sample is not None:
                    on_sample()
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp_path, path)
    return {"count": count, "skipped": skipped}


def chunk_digest(chunk: List[Tuple[int, Sample]]) -> str:
    """Digest of a shard's input, to recognise on resume that a complete shard came from the same input."""
    digest = hashlib.sha256()
    for index, sample in chunk:
        digest.update(json.dumps([index] + sample.descriptor(), sort_keys=True, default=str).encode("utf-8"))
    return digest.hexdigest()


# ---------------------------------------------------------------------------------- stats and sizes

def _own_shard_names(prefix: str, suffix: str = "") -> "re.Pattern":
    """Matches this prefix's shard file names only (not those of a longer prefix such as `<prefix>-b`)."""
    return re.compile(re.escape(prefix) + r"-\d{%d}\.tar" % SHARD_DIGITS + re.escape(suffix) + "$")


def _update_sizes_file(out_dir: str, prefix: str, shard_sizes: Dict[str, int]) -> None:
    """Merge this prefix's counts into sizes.json, keeping the entries of other prefixes in the folder."""
    path = os.path.join(out_dir, SIZES_FILE)
    own = _own_shard_names(prefix)
    sizes = {name: n for name, n in read_json_or(path, {}).items() if not own.match(name)}
    sizes.update(shard_sizes)
    write_json(path, sizes)


def _write_stats(out_dir: str, prefix: str, samples_per_shard: int, records: Dict[str, dict],
                 complete: bool) -> None:
    sizes = {name: record["count"] for name, record in records.items()}
    write_json(stats_path(out_dir, prefix), {
        "prefix": prefix,
        "pattern": shard_pattern(prefix, len(records)),
        "samples_per_shard": samples_per_shard,
        "num_shards": len(records),
        "total_samples": sum(sizes.values()),
        "skipped_samples": sum(len(record["skipped"]) for record in records.values()),
        "complete": complete,
        "shards": records,
    })
    _update_sizes_file(out_dir, prefix, sizes)


def _load_previous_records(out_dir: str, prefix: str, samples_per_shard: int) -> Dict[str, dict]:
    previous = read_json_or(stats_path(out_dir, prefix), None)
    if previous is None:
        return {}
    if previous.get("samples_per_shard") != samples_per_shard:
        raise ValueError(
            f"{stats_path(out_dir, prefix)}: earlier shards hold {previous.get('samples_per_shard')} samples "
            f"each, this run asks for {samples_per_shard}; use the same value, a new folder, or overwrite")
    return previous.get("shards", {})


def _remove_partial_shards(out_dir: str, prefix: str) -> None:
    """A `.tmp` shard is what a crash left mid-write: it is always rewritten."""
    partial = _own_shard_names(prefix, ".tmp")
    for name in os.listdir(out_dir):
        if partial.match(name):
            os.remove(os.path.join(out_dir, name))


def _stale_shards(out_dir: str, prefix: str, kept: Dict[str, dict]) -> List[str]:
    own = _own_shard_names(prefix)
    return sorted(name for name in os.listdir(out_dir) if own.match(name) and name not in kept)


# ---------------------------------------------------------------------------------------- packing

def pack_shards(samples: Iterable[Sample], out_dir: str, prefix: str, samples_per_shard: int = 10000,
                overwrite: bool = False, verify_images: bool = False, progress: bool = True,
                total: Optional[int] = None) -> PackResult:
    """Write `samples` into `<out_dir>/<prefix>-NNNNNN.tar` shards, resuming an earlier run by default.

    `overwrite` rewrites every shard instead. A complete shard whose recorded input differs from this
    run's raises (the input changed under a half-finished pack): use a new folder or `overwrite`.
    """
    from tqdm import tqdm

    if not prefix or "/" in prefix or "{" in prefix:
        raise ValueError(f"shard prefix must be a plain file name prefix, got {prefix!r}")
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be positive, got {samples_per_shard}")
    os.makedirs(out_dir, exist_ok=True)
    _remove_partial_shards(out_dir, prefix)
    previous = {} if overwrite else _load_previous_records(out_dir, prefix, samples_per_shard)
    if total is None and hasattr(samples, "__len__"):
        total = len(samples)

    records: Dict[str, dict] = {}
    reused = 0
    numbered = enumerate(samples)
    with tqdm(total=total, desc=f"packing {prefix}", unit=" samples", disable=not progress) as bar:
        for shard_index in itertools.count():
            chunk = list(itertools.islice(numbered, samples_per_shard))
            if not chunk:
                break
            name = shard_name(prefix, shard_index)
            path = os.path.join(out_dir, name)
            digest = chunk_digest(chunk)
            earlier = previous.get(name)
            if earlier is not None and os.path.exists(path):
                if earlier["digest"] != digest:
                    raise ValueError(f"{path} was written from other input than this run's samples "
                                     f"{chunk[0][0]}..{chunk[-1][0]}; use a new folder or overwrite")
                records[name] = earlier
                reused += 1
                bar.update(len(chunk))
                continue
            records[name] = {**write_shard(path, chunk, verify_images, on_sample=lambda: bar.update(1)),
                             "digest": digest}
            # shards of an earlier run not yet reached stay recorded, so that a second crash keeps them
            _write_stats(out_dir, prefix, samples_per_shard,
                         {**{k: v for k, v in previous.items() if k not in records}, **records}, complete=False)

    if not records:
        raise ValueError(f"nothing to pack into {out_dir}/{prefix}-*.tar: the input holds no samples")
    _write_stats(out_dir, prefix, samples_per_shard, records, complete=True)
    skipped = [entry for record in records.values() for entry in record["skipped"]]
    write_tsv(skipped_path(out_dir, prefix), SKIPPED_COLUMNS,
              ([str(entry[column]) for column in SKIPPED_COLUMNS] for entry in skipped), collapse_whitespace=True)
    return PackResult(out_dir=out_dir, prefix=prefix, pattern=shard_pattern(prefix, len(records)),
                      shard_sizes={name: record["count"] for name, record in records.items()},
                      skipped=skipped, reused_shards=reused, stale_shards=_stale_shards(out_dir, prefix, records))
