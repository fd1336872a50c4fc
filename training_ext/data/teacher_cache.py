"""Precomputed teacher text embeddings (LLM2CLIP-style): an on-disk cache keyed by sample.

A cache is a folder:
- ``header.json``: what made the embeddings (``teacher``, ``teacher_pretrained``, ``checkpoint_sha256``,
  ``tokenizer_context_length``), their ``embedding_width``, the data they index (``dataset_type``, ``dataset``,
  ``caption_field``, ``short_caption_field``), ``rows`` written so far and ``complete``;
- ``long.f32`` and ``short.f32``: raw little-endian float32 arrays of shape (rows, embedding_width), row i for
  the i-th line of ``index.tsv``, read through ``numpy.memmap``; the teacher's projected, unnormalised text
  features of the long and of the short caption;
- ``index.tsv``: ``key<TAB>caption digest`` a line (see keyed_captions).

Any model can fill one (an LLM text encoder of another width, say) through ``TeacherCacheWriter``. Writing is
append-only and resumable: rows are appended and flushed, then the header's ``rows`` is replaced atomically;
that header count is the commit point, anything after it is cut off when the writer reopens the folder.

Every embedding is finite: the writer refuses a batch holding NaN or inf (naming the sample), and opening a cache
scans both arrays once (``FINITE_SCAN_BYTES`` at a time), so a damaged cache is refused, naming file, row and
sample key, before training starts rather than surfacing as a non-finite loss some steps in.
"""
import hashlib
import os
from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from training_ext.common.file_io import read_json_or, write_json
from training_ext.common.text_files import read_arrow_csv, read_text

FORMAT = "open_clip_ext-teacher-cache"
VERSION = 1
HEADER_FILE = "header.json"
INDEX_FILE = "index.tsv"
FIELDS = ("long", "short")
# Header entries that define what the cached numbers are; a resumed write must agree on all of them.
IDENTITY_KEYS = ("teacher", "teacher_pretrained", "checkpoint_sha256", "tokenizer_context_length",
                 "embedding_width", "dataset_type", "dataset", "caption_field", "short_caption_field")
FINITE_SCAN_BYTES = 1 << 26  # the read side's NaN/inf scan reads this much of a data file at a time
NON_FINITE_FIX = "if float16 overflowed under autocast (inf), precompute with --precision fp32 or amp_bf16"


# CSVs were read verbatim (quotes kept) from commit 1fecb9f until the standard-CSV reader; a cache built then from a
# CSV with quoted fields holds digests of the quoted text
CSV_QUOTING_HINT = (". CSVs are read with standard CSV quoting since the standard-CSV reader; a cache built before "
                    "it read quotes verbatim. If this CSV was written by a CSV writer (pandas, Python's csv module, "
                    "TULIP's scripts), the cache holds targets of misread captions: precompute it again "
                    "(scripts/precompute_teacher_embeddings.py). If it was written without quoting (this project's "
                    "writer between commit 1fecb9f and the standard-CSV reader), rewrite the CSV with "
                    "`python scripts/requote_csv.py FILE` and keep the cache")


class TeacherCacheError(RuntimeError):
    """A cache that is unreadable, incomplete, or does not belong to the run; the message says which."""


def file_sha256(path: str, chunk_bytes: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


def teacher_checkpoint_file(model: str, pretrained: str, cache_dir=None) -> str:
    """The file behind a pretrained tag or path: its sha256 identifies the teacher's weights."""
    import open_clip

    if os.path.isfile(pretrained):
        return pretrained
    tag_cfg = open_clip.get_pretrained_cfg(model, pretrained)
    if not tag_cfg:
        raise TeacherCacheError(f"teacher weights {pretrained!r} are neither a file nor a pretrained tag of {model} "
                                f"(tags: {open_clip.list_pretrained_tags_by_model(model)})")
    return open_clip.download_pretrained(tag_cfg, cache_dir=cache_dir)


@dataclass
class CacheHeader:
    teacher: str
    checkpoint_sha256: str
    tokenizer_context_length: int
    embedding_width: int
    dataset_type: str
    dataset: str
    caption_field: str
    short_caption_field: Optional[str] = None  # None: the short caption is the long caption's first sentence
    teacher_pretrained: Optional[str] = None
    rows: int = 0
    complete: bool = False
    extra: dict = field(default_factory=dict)  # free-form notes (e.g. how an external model pooled)

    def to_json(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "dtype": "float32", "fields": list(FIELDS),
                **{k: getattr(self, k) for k in self.__dataclass_fields__}}

    @classmethod
    def from_json(cls, data: dict, where: str) -> "CacheHeader":
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise TeacherCacheError(f"{where}: not a teacher cache of format {FORMAT} version {VERSION} "
                                    f"(found format={data.get('format')!r}, version={data.get('version')!r})")
        missing = [k for k in ("teacher", "checkpoint_sha256", "tokenizer_context_length", "embedding_width",
                               "dataset_type", "dataset", "caption_field") if k not in data]
        if missing:
            raise TeacherCacheError(f"{where}: header lacks {missing}")
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def identity(self) -> dict:
        return {k: getattr(self, k) for k in IDENTITY_KEYS}


def read_header(path: str) -> CacheHeader:
    header_path = os.path.join(path, HEADER_FILE)
    try:
        data = read_json_or(header_path, None)
    except ValueError as error:  # not UTF-8 or not JSON: the message names the file and position
        raise TeacherCacheError(str(error)) from None
    if data is None:
        raise TeacherCacheError(f"{path}: no {HEADER_FILE}; not a teacher cache folder")
    return CacheHeader.from_json(data, header_path)


def _data_path(path: str, name: str) -> str:
    return os.path.join(path, f"{name}.f32")


def _truncate(file_path: str, size: int) -> None:
    with open(file_path, "ab") as handle:
        handle.truncate(size)


class TeacherCacheWriter:
    """Appends (key, caption digest, long embedding, short embedding) rows; reopening resumes.

    >>> writer = TeacherCacheWriter(folder, header)       # header.rows / complete are managed here
    >>> writer.append(keys, digests, long_features, short_features)
    >>> writer.finish()
    """

    def __init__(self, path: str, header: CacheHeader):
        self.path = path
        os.makedirs(path, exist_ok=True)
        existing = read_json_or(os.path.join(path, HEADER_FILE), None)
        if existing is None:
            header.rows, header.complete = 0, False
            self.header = header
            for name in FIELDS:
                _truncate(_data_path(path, name), 0)
            _truncate(os.path.join(path, INDEX_FILE), 0)
            write_json(os.path.join(path, HEADER_FILE), header.to_json())
        else:
            self.header = CacheHeader.from_json(existing, os.path.join(path, HEADER_FILE))
            differing = {k: (v, getattr(header, k)) for k, v in self.header.identity().items()
                         if v != getattr(header, k)}
            if differing:
                listing = "; ".join(f"{k}: cached {old!r}, now {new!r}" for k, (old, new) in differing.items())
                raise TeacherCacheError(f"{path} holds a cache made differently ({listing}); remove the folder "
                                        f"or choose another output folder")
            self._cut_to_committed_rows()
        self.keys_done = self._read_index_keys()

    @property
    def rows(self) -> int:
        return self.header.rows

    def _cut_to_committed_rows(self) -> None:
        """Drop whatever an interrupted write appended after the last committed header."""
        row_bytes = 4 * self.header.embedding_width
        for name in FIELDS:
            data_path = _data_path(self.path, name)
            size = os.path.getsize(data_path) if os.path.exists(data_path) else 0
            if size < self.header.rows * row_bytes:
                raise TeacherCacheError(f"{data_path}: {size} bytes, fewer than the {self.header.rows} committed "
                                        f"rows need; the cache is damaged, remove the folder and start again")
            _truncate(data_path, self.header.rows * row_bytes)
        index_path = os.path.join(self.path, INDEX_FILE)
        with open(index_path, "rb") as handle:
            lines = handle.read().split(b"\n")[: self.header.rows]
        with open(index_path, "wb") as handle:
            handle.write(b"".join(line + b"\n" for line in lines))

    def _read_index_keys(self) -> List[str]:
        return [line.split("\t", 1)[0] for line in read_text(os.path.join(self.path, INDEX_FILE)).splitlines()]

    def append(self, keys: Sequence[str], digests: Sequence[str], long: torch.Tensor, short: torch.Tensor,
               captions: Optional[Sequence[str]] = None) -> None:
        """Append one batch: (N,) keys and caption digests, (N, width) long and short embeddings (any float dtype,
        stored as float32). ``captions`` (N long captions) only make errors name the caption.

        Raises:
            ValueError: a shape that is not (N, width), a key holding a tab or newline.
            TeacherCacheError: an embedding holding NaN or inf (names the sample); nothing of the batch is written.
        """
        width = self.header.embedding_width
        for name, tensor in (("long", long), ("short", short)):
            if tuple(tensor.shape) != (len(keys), width):
                raise ValueError(f"{name} embeddings have shape {tuple(tensor.shape)}, expected ({len(keys)}, {width})")
        for name, tensor in (("long", long), ("short", short)):
            bad = torch.nonzero(~torch.isfinite(tensor.detach()).all(dim=1)).flatten().tolist()
            if bad:
                caption = f" (caption {captions[bad[0]][:80]!r})" if captions is not None else ""
                raise TeacherCacheError(
                    f"{self.path}: the {name} embedding of sample {keys[bad[0]]!r}{caption} holds NaN or inf "
                    f"({len(bad)} of this batch's {len(keys)} samples); the batch is not written, the "
                    f"{self.rows} rows before it are kept; {NON_FINITE_FIX}, then run the same command again")
        bad = [k for k in keys if "\t" in k or "\n" in k]
        if bad:
            raise ValueError(f"sample keys may not hold tabs or newlines: {bad[:3]}")
        for name, tensor in (("long", long), ("short", short)):
            array = tensor.detach().to("cpu", torch.float32).numpy().astype("<f4", copy=False)
            with open(_data_path(self.path, name), "ab") as handle:
                handle.write(array.tobytes())
                handle.flush()
                os.fsync(handle.fileno())
        with open(os.path.join(self.path, INDEX_FILE), "a", encoding="utf-8") as handle:
            handle.writelines(f"{k}\t{d}\n" for k, d in zip(keys, digests))
            handle.flush()
            os.fsync(handle.fileno())
        self.header.rows += len(keys)
        self.keys_done.extend(keys)
        write_json(os.path.join(self.path, HEADER_FILE), self.header.to_json())  # the commit point

    def finish(self) -> None:
        duplicates = len(self.keys_done) - len(set(self.keys_done))
        if duplicates:
            raise TeacherCacheError(f"{self.path}: {duplicates} sample key(s) occur more than once; keys must be "
                                    f"unique per sample")
        self.header.complete = True
        write_json(os.path.join(self.path, HEADER_FILE), self.header.to_json())


def _text(key) -> str:
    return key.decode("utf-8") if isinstance(key, bytes) else str(key)


def fixed_width_bytes(array) -> np.ndarray:
    """(N,) numpy ``S<w>`` array of an Arrow string or binary array's values, w = the longest value, built from the
    Arrow buffers without a Python object per value. Values must not end in NUL bytes (numpy strips them)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    array = pc.cast(array, pa.large_binary())
    count = len(array)
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int64)[array.offset:array.offset + count + 1]
    data = np.frombuffer(array.buffers()[2], dtype=np.uint8) if count else np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    width = int(lengths.max()) if count else 1
    out = np.zeros((count, max(width, 1)), dtype=np.uint8)
    row_of_byte = np.repeat(np.arange(count), lengths)
    column_of_byte = np.arange(int(offsets[-1] - offsets[0])) - np.repeat(offsets[:-1] - offsets[0], lengths)
    out[row_of_byte, column_of_byte] = data[offsets[0]:offsets[-1]]
    return out.view(f"S{max(width, 1)}").reshape(count)


def _read_index(path: str) -> Tuple[np.ndarray, np.ndarray]:
    """(keys, digests) of ``index.tsv`` (``key<TAB>digest`` a line, never quoted) as fixed-width numpy bytes."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    try:
        table = read_arrow_csv(
            path, read_options=pa_csv.ReadOptions(column_names=["key", "digest"]),
            parse_options=pa_csv.ParseOptions(delimiter="\t", quote_char=False, ignore_empty_lines=False),
            convert_options=pa_csv.ConvertOptions(column_types={"key": pa.large_string(), "digest": pa.string()}))
    except pa.ArrowInvalid as error:
        raise TeacherCacheError(f"{path}: not a cache index (key<TAB>digest per line): {error}") from None
    return fixed_width_bytes(table.column("key")), fixed_width_bytes(table.column("digest"))


class TeacherCache:
    """Read side: embeddings by sample key, memory-mapped (opened lazily in each DataLoader worker)."""

    def __init__(self, path: str):
        self.path = path
        self.header = read_header(path)
        if not self.header.complete:
            raise TeacherCacheError(f"{path}: incomplete cache ({self.header.rows} rows written); finish it by "
                                    f"re-running scripts/precompute_teacher_embeddings.py with the same arguments")
        expected = self.header.rows * 4 * self.header.embedding_width
        for name in FIELDS:
            size = os.path.getsize(_data_path(path, name)) if os.path.exists(_data_path(path, name)) else None
            if size != expected:
                raise TeacherCacheError(f"{_data_path(path, name)}: {size} bytes, expected {expected} "
                                        f"({self.header.rows} rows x {self.header.embedding_width} float32)")
        # keys and digests as fixed-width numpy bytes (no Python object per row: a 1.2M-row cache opens in a few
        # hundred MB less and forked workers share the pages); lookups by binary search over the sorted keys
        self.keys, self.digests = _read_index(os.path.join(path, INDEX_FILE))
        if len(self.keys) != self.header.rows:
            raise TeacherCacheError(f"{path}/{INDEX_FILE}: {len(self.keys)} lines for {self.header.rows} rows")
        self._order = np.argsort(self.keys, kind="stable")
        self._sorted_keys = self.keys[self._order]
        self._arrays = {}
        self._check_finite()

    def _check_finite(self) -> None:
        """Raise TeacherCacheError naming the file, the first row holding NaN or inf, its sample key and how many
        rows do. Reads each data file once, FINITE_SCAN_BYTES at a time."""
        rows, width = self.header.rows, self.header.embedding_width
        step = max(1, FINITE_SCAN_BYTES // (4 * max(width, 1)))
        for name in FIELDS:
            array = np.memmap(_data_path(self.path, name), dtype="<f4", mode="r", shape=(rows, width)) if rows else []
            bad = [start + np.flatnonzero(~np.isfinite(array[start:start + step]).all(axis=1))
                   for start in range(0, rows, step)]
            bad = np.concatenate(bad) if bad else np.zeros(0, dtype=np.int64)
            if len(bad):
                row = int(bad[0])
                raise TeacherCacheError(
                    f"{_data_path(self.path, name)}: row {row} (sample key {_text(self.keys[row])!r} of "
                    f"{self.header.dataset}) holds NaN or inf ({len(bad)} of {rows} rows do): the teacher produced "
                    f"a non-finite embedding or the file is damaged. Remove {self.path} and precompute the cache "
                    f"again ({NON_FINITE_FIX})")

    @property
    def width(self) -> int:
        return self.header.embedding_width

    def __len__(self):
        return self.header.rows

    def __getstate__(self):
        return {**self.__dict__, "_arrays": {}}  # workers reopen the memory maps instead of copying the data

    def _array(self, name: str) -> np.memmap:
        if name not in self._arrays:
            self._arrays[name] = np.memmap(_data_path(self.path, name), dtype="<f4", mode="r",
                                           shape=(self.header.rows, self.header.embedding_width))
        return self._arrays[name]

    def rows_of(self, keys: np.ndarray) -> np.ndarray:
        """(N,) int64 cache rows of (N,) sample keys (numpy bytes or str); -1 where a key is not in the cache."""
        keys = np.asarray(keys)
        if keys.dtype.kind == "U":
            keys = np.char.encode(keys, "utf-8")
        if not len(self._sorted_keys):
            return np.full(len(keys), -1, dtype=np.int64)
        positions = np.searchsorted(self._sorted_keys, keys).clip(0, len(self._sorted_keys) - 1)
        return np.where(self._sorted_keys[positions] == keys, self._order[positions], -1).astype(np.int64)

    def _missing_key(self, key: str) -> TeacherCacheError:
        return TeacherCacheError(f"{self.path}: no cached embedding for sample key {key!r} (the cache indexes "
                                 f"{self.header.dataset_type} {self.header.dataset}); precompute it for this "
                                 f"training set")

    def _other_caption(self, key: str) -> TeacherCacheError:
        return TeacherCacheError(f"{self.path}: sample {key!r} has another caption than the one cached (cache made "
                                 f"from {self.header.dataset}, column {self.header.caption_field!r})"
                                 + (CSV_QUOTING_HINT if self.header.dataset_type == "csv" else ""))

    def checked_rows(self, keys: np.ndarray, captions) -> np.ndarray:
        """(N,) int64 cache rows of the samples ``keys`` whose cleaned captions are ``captions`` (a sequence of N
        str), every key looked up and every caption's digest compared. Raises TeacherCacheError naming the first
        sample that is missing or has another caption."""
        from training_ext.data.keyed_captions import caption_digest
        rows = self.rows_of(keys)
        missing = np.flatnonzero(rows < 0)
        if len(missing):
            raise self._missing_key(_text(keys[missing[0]]))
        digests = np.fromiter((caption_digest(caption) for caption in captions), dtype=self.digests.dtype,
                              count=len(rows))
        differing = np.flatnonzero(self.digests[rows] != digests)
        if len(differing):
            raise self._other_caption(_text(keys[differing[0]]))
        return rows

    def row(self, key: str, caption: Optional[str] = None) -> int:
        """The row of ``key``; with ``caption``, also check that the cache was computed from that caption."""
        from training_ext.data.keyed_captions import caption_digest
        row = int(self.rows_of(np.array([key.encode("utf-8")]))[0])
        if row < 0:
            raise self._missing_key(key)
        if caption is not None and caption_digest(caption).encode("ascii") != self.digests[row]:
            raise self._other_caption(key)
        return row

    def embeddings(self, rows: Iterable[int], name: str = "long") -> torch.Tensor:
        rows = list(rows)
        return torch.from_numpy(np.array(self._array(name)[rows], dtype=np.float32))


def check_cache_matches(header: CacheHeader, where: str, teacher: Optional[str] = None,
                        checkpoint_sha256: Optional[str] = None, tokenizer_context_length: Optional[int] = None,
                        dataset_type: Optional[str] = None, caption_field: Optional[str] = None) -> None:
    """Refuse a cache made by another teacher, weights, tokenizer length, data kind or caption field (the ones
    given are checked)."""
    wanted = {"teacher": teacher, "checkpoint_sha256": checkpoint_sha256,
              "tokenizer_context_length": tokenizer_context_length, "dataset_type": dataset_type,
              "caption_field": caption_field}
    differing = [f"{k}: cache has {getattr(header, k)!r}, this run {v!r}" for k, v in wanted.items()
                 if v is not None and getattr(header, k) != v]
    if differing:
        raise TeacherCacheError(f"{where} does not match this run: {'; '.join(differing)}. Precompute a cache "
                                f"for this teacher and data (scripts/precompute_teacher_embeddings.py)")
