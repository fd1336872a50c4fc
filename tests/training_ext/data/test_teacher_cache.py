"""The teacher-embedding cache: precompute command, resume after a crash, keys per dataset type, refusals."""
import hashlib
import io
import tarfile

import numpy as np
import open_clip
import pytest
import torch

import open_clip_ext  # noqa: F401
from support.data_prep_fixtures import load_script, read_shards_with_webdataset
from training_ext.common.captions import first_sentence
from training_ext.data.keyed_captions import caption_digest
from training_ext.data.teacher_cache import (TeacherCache, TeacherCacheError, TeacherCacheWriter, check_cache_matches,
                                        read_header)

precompute = load_script("precompute_teacher_embeddings")

CAPTIONS = [f"A red car number {i} parks beside a tree. The tree has {i} branches and a bird on top of it."
            for i in range(7)]
CAPTIONS[3] = "A very long caption. " + " ".join(f"word{i}" for i in range(120))


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    torch.save(open_clip.create_model("tiny-clip").state_dict(), path)
    return str(path)


def _teacher(path):
    return open_clip.create_model("tiny-clip", pretrained=path).eval()


def _write_csv(path, captions):
    with open(path, "w") as handle:
        handle.write("filepath\ttitle\tother\n")
        for i, caption in enumerate(captions):
            handle.write(f"img{i}.jpg\t{caption}\tsomething else {i}\n")
    return str(path)


def _run(teacher_file, data, out, *extra):
    return precompute.main(["--teacher-model", "tiny-clip", "--teacher-pretrained", teacher_file, "--data", str(data),
                            "--output", str(out), "--batch-size", "3", "--no-progress", *extra])


def test_csv_cache_holds_the_teachers_features(tmp_path, teacher_file):
    csv = _write_csv(tmp_path / "train.csv", CAPTIONS)
    _run(teacher_file, csv, tmp_path / "cache")
    cache = TeacherCache(str(tmp_path / "cache"))
    header = cache.header
    assert header.teacher == "tiny-clip" and header.tokenizer_context_length == 77
    assert header.checkpoint_sha256 == hashlib.sha256(open(teacher_file, "rb").read()).hexdigest()
    assert header.embedding_width == 64 and header.caption_field == "title" and len(cache) == 7
    teacher, tokenize = _teacher(teacher_file), open_clip.get_tokenizer("tiny-clip")
    rows = [cache.row(f"row{i}", caption) for i, caption in enumerate(CAPTIONS)]
    with torch.no_grad():
        expected_long = teacher.encode_text(tokenize(CAPTIONS))
        expected_short = teacher.encode_text(tokenize([first_sentence(c) for c in CAPTIONS]))
    torch.testing.assert_close(cache.embeddings(rows, "long"), expected_long, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cache.embeddings(rows, "short"), expected_short, atol=1e-5, rtol=1e-5)
    # The 248-token student ids cut to 77 (what stage 1 feeds a live teacher) give the cached targets too.
    student_ids = open_clip.get_tokenizer("tiny-clip-rope-248")(CAPTIONS)
    with torch.no_grad():
        live = teacher.encode_text(open_clip_ext.truncate_tokens(student_ids, 77, tokenize.eot_token_id))
    torch.testing.assert_close(cache.embeddings(rows), live, atol=1e-5, rtol=1e-5)
    with pytest.raises(TeacherCacheError, match="another caption"):
        cache.row("row0", "a different caption")
    with pytest.raises(TeacherCacheError, match="no cached embedding for sample key 'row99'"):
        cache.row("row99")
    with pytest.raises(TeacherCacheError, match="teacher: cache has 'tiny-clip', this run 'ViT-L-14'"):
        check_cache_matches(header, "cache", teacher="ViT-L-14", tokenizer_context_length=77)


def test_interrupted_precompute_resumes_to_the_same_cache(tmp_path, teacher_file, monkeypatch):
    csv = _write_csv(tmp_path / "train.csv", CAPTIONS)
    _run(teacher_file, csv, tmp_path / "whole")
    calls = {"n": 0}
    real_append = TeacherCacheWriter.append

    def crash_on_third_batch(self, *args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        real_append(self, *args)

    monkeypatch.setattr(TeacherCacheWriter, "append", crash_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        _run(teacher_file, csv, tmp_path / "resumed")
    monkeypatch.setattr(TeacherCacheWriter, "append", real_append)
    assert read_header(str(tmp_path / "resumed")).rows == 6
    with pytest.raises(TeacherCacheError, match="incomplete"):
        TeacherCache(str(tmp_path / "resumed"))
    # A torn write after the last commit (bytes and an index line the header does not count) is cut off.
    with open(tmp_path / "resumed" / "long.f32", "ab") as handle:
        handle.write(b"\x01" * 100)
    with open(tmp_path / "resumed" / "index.tsv", "a") as handle:
        handle.write("row6\tdeadbeef\n")
    _run(teacher_file, csv, tmp_path / "resumed")
    for name in ("long.f32", "short.f32", "index.tsv"):
        assert (tmp_path / "resumed" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()
    assert TeacherCache(str(tmp_path / "resumed")).header.complete

    with pytest.raises(TeacherCacheError, match="caption_field: cached 'title', now 'other'"):
        _run(teacher_file, csv, tmp_path / "resumed", "--csv-caption-key", "other")
    monkeypatch.setattr(TeacherCacheWriter, "append", crash_on_third_batch)
    calls["n"] = 0
    with pytest.raises(KeyboardInterrupt):
        _run(teacher_file, csv, tmp_path / "partial")
    monkeypatch.setattr(TeacherCacheWriter, "append", real_append)
    _write_csv(tmp_path / "train.csv", CAPTIONS[:2])  # fewer rows than already cached
    with pytest.raises(TeacherCacheError, match="the data changed"):
        _run(teacher_file, csv, tmp_path / "partial")


def _add(tar, name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_webdataset_and_folder_keys(tmp_path, teacher_file):
    shard = tmp_path / "train-000000.tar"
    with tarfile.open(shard, "w") as tar:
        for i in range(4):
            _add(tar, f"{i:06d}.jpg", b"\xff\xd8 not really an image")
            _add(tar, f"{i:06d}.txt", CAPTIONS[i].encode())
            _add(tar, f"{i:06d}.short.txt", f"short {i}".encode())
        _add(tar, "000009.jpg", b"no caption: skipped as training skips it")
    _run(teacher_file, shard, tmp_path / "wds", "--wds-short-caption-key", "short.txt")
    cache = TeacherCache(str(tmp_path / "wds"))
    assert [key.decode() for key in cache.keys] == ["000000", "000001", "000002", "000003"]
    assert {key.decode() for key in cache.keys} == {s["__key__"] for s in read_shards_with_webdataset(str(shard)) if "txt" in s}
    teacher, tokenize = _teacher(teacher_file), open_clip.get_tokenizer("tiny-clip")
    with torch.no_grad():
        expected = teacher.encode_text(tokenize([f"short {i}" for i in range(4)]))
    torch.testing.assert_close(cache.embeddings(range(4), "short"), expected, atol=1e-5, rtol=1e-5)

    root = tmp_path / "folder"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    (root / "a" / "x.jpg").write_bytes(b"jpg")
    (root / "a" / "x.txt").write_text(f"{CAPTIONS[0]}\n\n{CAPTIONS[1]}\n")
    (root / "b" / "y.png").write_bytes(b"png")
    (root / "y.txt").write_text(CAPTIONS[2] + "\n")
    (root / "orphan.jpg").write_bytes(b"jpg")
    _run(teacher_file, root, tmp_path / "folder_cache", "--workers", "1")  # tokenized in a worker process
    cache = TeacherCache(str(tmp_path / "folder_cache"))
    assert sorted(key.decode() for key in cache.keys) == ["a/x#0", "a/x#1", "b/y#0"]
    assert cache.digests[cache.row("a/x#1")].decode() == caption_digest(CAPTIONS[1])
    raw = np.fromfile(tmp_path / "folder_cache" / "long.f32", dtype="<f4").reshape(3, 64)
    assert np.array_equal(raw, cache.embeddings(range(3)).numpy())


def test_cache_index_lookups_are_vectorised_without_python_objects_per_row(tmp_path):
    import pyarrow as pa
    from training_ext.data.teacher_cache import fixed_width_bytes
    keys = ["row0", "a/b#12", "ünïcode#0", "x" * 40, "row10"]
    column = pa.chunked_array([pa.array(keys[:2], pa.large_string()), pa.array(keys[2:], pa.large_string())])
    assert fixed_width_bytes(column).tolist() == [key.encode("utf-8") for key in keys]  # the naive encoding
    assert fixed_width_bytes(pa.array(keys, pa.string()).slice(1, 3)).tolist() == [k.encode() for k in keys[1:4]]

    header_args = dict(teacher="t", checkpoint_sha256="0" * 64, tokenizer_context_length=77, embedding_width=2,
                       dataset_type="folder", dataset="d", caption_field="txt")
    from training_ext.data.teacher_cache import CacheHeader
    writer = TeacherCacheWriter(str(tmp_path / "cache"), CacheHeader(**header_args))
    captions = [f"caption {i}" for i in range(len(keys))]
    writer.append(keys, [caption_digest(c) for c in captions], torch.zeros(5, 2), torch.zeros(5, 2))
    writer.finish()
    cache = TeacherCache(str(tmp_path / "cache"))
    assert cache.rows_of(np.array([k.encode() for k in reversed(keys)] + [b"row1", b"x" * 41])).tolist() == \
        [4, 3, 2, 1, 0, -1, -1]
    assert cache.checked_rows(np.array([keys[3].encode(), keys[0].encode()]), [captions[3], captions[0]]).tolist() \
        == [3, 0]
    with pytest.raises(TeacherCacheError, match="no cached embedding for sample key 'row1'"):
        cache.checked_rows(np.array([b"row0", b"row1"]), captions[:2])
    with pytest.raises(TeacherCacheError, match=r"sample 'a/b#12' has another caption"):
        cache.checked_rows(np.array([keys[1].encode()]), ["not the cached caption"])
