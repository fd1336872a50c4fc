"""Benchmark readers on tiny fixtures in each benchmark's exact layout, and their error messages."""
import json
import os
from dataclasses import asdict

import pytest

from training_ext.eval.datasets import (BENCHMARKS, BenchmarkError, read_coco_5k, read_flickr30k_full,
                                     read_flickr30k_karpathy, read_imagenet_val, read_long_dci, read_sharegpt4v_1k,
                                     read_sharegpt4v_10k, read_urban1k)

from support.benchmark_fixtures import (make_coco, make_flickr30k, make_imagenet, make_long_dci, make_sharegpt4v,
                                make_urban1k)


def _as_dict(retrieval_set):
    """The three lists a reader must get right (skipped files and notes are checked where a protocol has any)."""
    return {key: value for key, value in asdict(retrieval_set).items() if key not in ("skipped", "notes")}


def test_urban1k_reads_first_caption_line(tmp_path):
    root, expected = make_urban1k(str(tmp_path))
    assert _as_dict(read_urban1k(root)) == expected


def test_sharegpt4v_reads_first_n_entries_and_joins_lines(tmp_path):
    json_path, image_root, expected = make_sharegpt4v(str(tmp_path), count=6, extra=2)
    del expected["lotlip_captions"]
    assert _as_dict(read_sharegpt4v_1k(json_path, image_root, count=6)) == expected
    assert len(read_sharegpt4v_10k(json_path, image_root, count=8).captions) == 8
    with pytest.raises(BenchmarkError, match=r"first 9 entries, the file has 8"):
        read_sharegpt4v_10k(json_path, image_root, count=9)


def test_long_dci_reads_csv(tmp_path):
    csv_path, expected = make_long_dci(str(tmp_path))
    assert _as_dict(read_long_dci(csv_path)) == expected


def test_coco_keeps_first_five_captions_in_id_order(tmp_path):
    root, expected = make_coco(str(tmp_path))
    result = read_coco_5k(root)
    assert _as_dict(result) == expected
    assert len(result.captions) == 5 * len(result.image_paths)


def test_flickr30k_both_protocols(tmp_path):
    flickr = make_flickr30k(str(tmp_path))
    karpathy = read_flickr30k_karpathy(flickr["karpathy"], flickr["image_dir"])
    assert _as_dict(karpathy) == flickr["expected_karpathy"]
    assert len(karpathy.image_paths) == 3  # only the 'test' split
    assert _as_dict(read_flickr30k_full(flickr["token"], flickr["image_dir"])) == flickr["expected_full"]
    # the '|'-separated results.csv, including its row that lacks the second '|'
    assert _as_dict(read_flickr30k_full(flickr["csv"], flickr["image_dir"])) == flickr["expected_full"]


def test_imagenet_maps_wnids_to_open_clip_classnames(tmp_path):
    root, expected = make_imagenet(str(tmp_path))
    result = read_imagenet_val(root)
    assert (result.image_paths, result.labels, result.classnames) == (
        expected["image_paths"], expected["labels"], expected["classnames"])


def test_missing_files_are_named(tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(BenchmarkError, match="Urban1k caption folder not found.*nowhere"):
        read_urban1k(missing)
    with pytest.raises(BenchmarkError, match="captions_val2017.json"):
        os.makedirs(tmp_path / "coco" / "val2017")
        read_coco_5k(str(tmp_path / "coco"))
    with pytest.raises(BenchmarkError, match="--flickr30k-images"):
        read_flickr30k_full(missing, None)


def test_missing_image_is_named(tmp_path):
    root, expected = make_urban1k(str(tmp_path))
    os.remove(expected["image_paths"][2])
    with pytest.raises(BenchmarkError, match=r"unpaired.*1 of 8 caption files have no image.*102\.txt"):
        read_urban1k(root)
    coco_root, coco = make_coco(str(tmp_path / "c"))
    os.remove(coco["image_paths"][1])
    with pytest.raises(BenchmarkError, match=r"1 of 4 images are missing.*000000000007\.jpg"):
        read_coco_5k(coco_root)


def test_malformed_files_name_file_and_row(tmp_path):
    json_path, image_root, _ = make_sharegpt4v(str(tmp_path))
    entries = json.load(open(json_path))
    del entries[3]["conversations"][1]
    json.dump(entries, open(json_path, "w"))
    with pytest.raises(BenchmarkError, match=r"share-captioner.*entry 3"):
        read_sharegpt4v_1k(json_path, image_root, count=6)

    open(json_path, "w").write("{not json")
    with pytest.raises(BenchmarkError, match="not valid JSON"):
        read_sharegpt4v_1k(json_path, image_root, count=6)

    csv_path, _ = make_long_dci(str(tmp_path / "dci"))
    lines = open(csv_path).read().splitlines()
    open(csv_path, "w").write("\n".join(lines[:3] + [lines[3].split("\t")[0] + "\t "] + lines[4:]) + "\n")
    with pytest.raises(BenchmarkError, match=r"dci_long.csv line 4"):
        read_long_dci(csv_path)
    open(csv_path, "w").write("path\tcaption\nx.jpg\thello\n")
    with pytest.raises(BenchmarkError, match="'filepath'"):
        read_long_dci(csv_path)

    flickr = make_flickr30k(str(tmp_path / "flickr"))
    with open(flickr["token"], "a") as f:
        f.write("no-tab-or-hash-here\n")
    with pytest.raises(BenchmarkError, match=r"results_20130124.token line 26"):
        read_flickr30k_full(flickr["token"], flickr["image_dir"])


def test_imagenet_rejects_non_wnid_folders(tmp_path):
    root, _ = make_imagenet(str(tmp_path))
    os.makedirs(os.path.join(root, "cats"))
    with pytest.raises(BenchmarkError, match=r"\['cats'\].*not ImageNet-1k wnids"):
        read_imagenet_val(root)


def test_registry_names_protocols_apart():
    assert {"urban1k", "sharegpt4v-1k", "sharegpt4v-10k", "sharegpt4v-1k-lotlip", "sharegpt4v-10k-lotlip",
            "long-dci", "dci-lotlip", "dci-fgclip", "dci-extra-caption", "docci", "docci-goal", "iiw", "iiw-flair",
            "coco-5k", "coco-karpathy-5k",
            "flickr30k-karpathy-1k", "flickr30k-full-31k", "imagenet"} == set(BENCHMARKS)
    names = [b.protocol_name for b in BENCHMARKS.values()]
    assert len(set(names)) == len(names)
    protocols = [b.protocol for b in BENCHMARKS.values()]
    assert len(set(protocols)) == len(protocols)
    assert "share4v_sam_10k.json" in BENCHMARKS["sharegpt4v-10k"].protocol
