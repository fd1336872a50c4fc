"""The resumable webdataset shard writer: content, counts open_clip_train reads, crash and resume."""
import argparse
import functools
import inspect
import io
import json
import os

import braceexpand
import pytest
from PIL import Image

import training_ext.prep.shard_writer as shard_writer
from support.data_prep_fixtures import count_samples_in_tar, file_bytes, read_json, read_shards_with_webdataset, tiny_image
from training_ext.prep.shard_writer import pack_shards
from training_ext.prep.sources import make_sample

FORMATS = ["jpg", "png", "webp"]


def make_samples(folder, count, missing=()):
    """`count` samples cycling through the formats open_clip decodes; indices in `missing` have no image."""
    samples = []
    for i in range(count):
        path = str(folder / f"img{i}.{FORMATS[i % 3]}")
        if i not in missing:
            tiny_image(path, seed=i)
        samples.append(make_sample(path, f"Picture {i} of a thing. It has detail {i * 7}.", f"id{i}",
                                   extra={"n": i}))
    return samples


def shard_paths(result):
    return [os.path.join(result.out_dir, name) for name in braceexpand.braceexpand(result.pattern)]


def test_shards_hold_exactly_the_samples_and_sizes_json_is_what_open_clip_reads(tmp_path):
    from open_clip_train.data import get_dataset_size

    samples = make_samples(tmp_path / "img", 8, missing={4})
    bmp = tiny_image(tmp_path / "img" / "odd.bmp", seed=99)  # not decoded by open_clip: re-encoded to PNG
    samples.append(make_sample(bmp, "A bitmap. Re-encoded.", "bmp"))
    out = tmp_path / "shards"

    result = pack_shards(samples, str(out), "train", samples_per_shard=4, progress=False)

    # 9 inputs in shards of 4 input positions: [0-3], [4-7] minus the missing 4, [8]
    assert result.pattern == "train-{000000..000002}.tar"
    paths = shard_paths(result)
    assert [count_samples_in_tar(p) for p in paths] == [4, 3, 1]
    assert read_json(out / "sizes.json") == {"train-000000.tar": 4, "train-000001.tar": 3, "train-000002.tar": 1}
    assert get_dataset_size(str(out / result.pattern)) == (8, 3)
    stats = read_json(out / "train_stats.json")
    assert (stats["total_samples"], stats["num_shards"], stats["complete"]) == (8, 3, True)

    # the missing image is reported, with its index and path
    assert [(s["index"], s["path"], s["reason"]) for s in result.skipped] == [(4, samples[4].image_path, "missing")]
    assert (out / "train_skipped.tsv").read_text().splitlines()[1].split("\t")[:3] == ["4", "id4", samples[4].image_path]

    read_back = read_shards_with_webdataset(paths)
    written = [i for i in range(9) if i != 4]
    assert [s["__key__"] for s in read_back] == [f"{i:09d}" for i in written]
    for sample, i in zip(read_back, written):
        source = samples[i]
        assert sample["txt"].decode() == source.caption
        assert sample["short.txt"].decode() == source.caption.split(". ")[0] + "."
        meta = json.loads(sample["json"])
        assert (meta["source_id"], meta["original_path"], meta["index"]) == (source.source_id, source.image_path, i)
        assert meta["caption_chars"] == len(source.caption)
        if i < 8:  # native formats keep their bytes and extension
            assert sample[FORMATS[i % 3]] == file_bytes(source.image_path)
        else:
            assert set(sample) == {"__key__", "png", "txt", "short.txt", "json"}
            with Image.open(bmp) as original, Image.open(io.BytesIO(sample["png"])) as packed:
                assert packed.format == "PNG"
                assert packed.convert("RGB").tobytes() == original.convert("RGB").tobytes()


def test_open_clip_train_webdataset_pipeline_reads_the_shards(tmp_path, monkeypatch):
    import open_clip_train.data
    from torchvision import transforms
    from webdataset.tariterators import tar_file_expander

    # open_clip_train 3.3.0 with webdataset >= 0.2.96 fails with KeyError 'fname' on the end-of-shard marker
    # {} that tar_file_expander now yields (open_clip issue #935, webdataset issue #384); the fix they give,
    # eof_value=None, is applied here so that this test checks the shards, not that upstream bug. Older
    # webdataset (0.2.86, which open_clip_torch[training] pins) has no marker and no such argument.
    if "eof_value" in inspect.signature(tar_file_expander).parameters:
        monkeypatch.setattr(open_clip_train.data, "tar_file_expander",
                            functools.partial(tar_file_expander, eof_value=None))

    samples = make_samples(tmp_path / "img", 5)
    result = pack_shards(samples, str(tmp_path / "shards"), "train", samples_per_shard=2, progress=False)
    args = argparse.Namespace(train_data=str(tmp_path / "shards" / result.pattern), train_num_samples=None,
                              dataset_resampled=False, train_data_upsampling_factors=None, seed=0,
                              batch_size=1, world_size=1, workers=0)

    data = open_clip_train.data.get_wds_dataset(args, transforms.ToTensor(), is_train=True, tokenizer=lambda text: [text])

    assert data.dataloader.num_samples == 5  # from sizes.json: no --train-num-samples given
    seen = [(tuple(images.shape), texts[0]) for images, texts in data.dataloader]
    assert sorted(seen) == sorted(((1, 3, 5, 6), s.caption) for s in samples)


def crash_on_call(monkeypatch, crash_at):
    """Make the writer die (like Ctrl-C or a kill) while encoding the `crash_at`-th image."""
    real, calls = shard_writer.encode_image, []

    def dying(path, verify=False):
        calls.append(path)
        if len(calls) == crash_at:
            raise KeyboardInterrupt
        return real(path, verify)

    monkeypatch.setattr(shard_writer, "encode_image", dying)


def test_resumed_pack_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    samples = make_samples(tmp_path / "img", 11, missing={2})
    reference = pack_shards(samples, str(tmp_path / "ref"), "s", samples_per_shard=3, progress=False)

    out = tmp_path / "resumed"
    crash_on_call(monkeypatch, crash_at=8)  # 2 shards complete, the third half written
    with pytest.raises(KeyboardInterrupt):
        pack_shards(samples, str(out), "s", samples_per_shard=3, progress=False)
    monkeypatch.undo()
    assert sorted(os.listdir(out)) == ["s-000000.tar", "s-000001.tar", "s-000002.tar.tmp", "s_stats.json",
                                       "sizes.json"]
    assert read_json(out / "s_stats.json")["complete"] is False
    assert read_json(out / "sizes.json") == {"s-000000.tar": 2, "s-000001.tar": 3}
    kept = {name: os.stat(out / name) for name in ("s-000000.tar", "s-000001.tar")}

    resumed = pack_shards(samples, str(out), "s", samples_per_shard=3, progress=False)

    assert resumed.reused_shards == 2
    for name, before in kept.items():  # complete shards were kept, not rewritten
        after = os.stat(out / name)
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert not any(name.endswith(".tmp") for name in os.listdir(out))
    assert sorted(os.listdir(out)) == sorted(os.listdir(tmp_path / "ref"))
    for name in os.listdir(out):
        assert file_bytes(out / name) == file_bytes(tmp_path / "ref" / name), name
    assert resumed.shard_sizes == reference.shard_sizes and resumed.skipped == reference.skipped


def test_resume_refuses_shards_written_from_other_input(tmp_path):
    samples = make_samples(tmp_path / "img", 4)
    out = str(tmp_path / "shards")
    pack_shards(samples, out, "s", samples_per_shard=2, progress=False)
    changed = [make_sample(samples[0].image_path, "Another caption.", "id0")] + samples[1:]

    with pytest.raises(ValueError, match="other input"):
        pack_shards(changed, out, "s", samples_per_shard=2, progress=False)
    with pytest.raises(ValueError, match="hold 2 samples"):
        pack_shards(samples, out, "s", samples_per_shard=3, progress=False)

    result = pack_shards(changed, out, "s", samples_per_shard=2, overwrite=True, progress=False)
    assert result.reused_shards == 0
    assert read_shards_with_webdataset(shard_paths(result))[0]["txt"] == b"Another caption."


def test_prefixes_share_one_sizes_json(tmp_path):
    out = str(tmp_path / "shards")
    pack_shards(make_samples(tmp_path / "a", 3), out, "s", samples_per_shard=2, progress=False)
    pack_shards(make_samples(tmp_path / "b", 1), out, "s-val", samples_per_shard=2, progress=False)
    result = pack_shards(make_samples(tmp_path / "a", 1), out, "s", samples_per_shard=2, overwrite=True,
                         progress=False)
    assert result.stale_shards == ["s-000001.tar"]
    # re-packing "s" replaced its own entries only; its old second shard is now stale and uncounted
    assert read_json(os.path.join(out, "sizes.json")) == {"s-000000.tar": 1, "s-val-000000.tar": 1}
