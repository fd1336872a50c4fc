"""The data preparation command lines on tiny fixtures: ShareGPT4V, DCI, and the webdataset packer."""
import json
import os
import re
import subprocess
import sys

import braceexpand
import pandas as pd
import pytest

from support.data_prep_fixtures import SCRIPTS, load_script, read_json, read_shards_with_webdataset, tiny_image

# starts subprocesses or runs a pipeline end to end
pytestmark = pytest.mark.slow


def normalise(text):
    """The caption rule, re-stated: every run of white space (newlines, tabs) is one space."""
    return re.sub(r"\s+", " ", text).strip()


def read_tsv(path):
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


@pytest.mark.parametrize("script", ["prepare_sharegpt4v", "prepare_dci", "pack_webdataset"])
def test_help(script):
    done = subprocess.run([sys.executable, str(SCRIPTS / f"{script}.py"), "--help"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage:") and "--help" in done.stdout


# ------------------------------------------------------------------------------------------ ShareGPT4V

def sharegpt4v_entry(i, image, caption):
    return {"id": f"e{i}", "image": image,
            "conversations": [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": caption}]}


@pytest.fixture
def sharegpt4v(tmp_path):
    """9 entries: validation = the first 3. Index 1's image is missing, 3 has no gpt turn, 4 no image key,
    6 reuses validation image 0; captions with newlines, tabs and quotes."""
    root = tmp_path / "data"
    entries = []
    for i in range(9):
        image = f"{'coco' if i % 2 else 'sam'}/img_{i}.jpg"
        caption = f"Summary {i} of the scene.\nIt shows\t\"thing\" {i}.\n\nMore detail {i * 3}."
        entries.append(sharegpt4v_entry(i, image, caption))
        if i != 1:
            tiny_image(root / image, seed=i)
    entries[3]["conversations"] = entries[3]["conversations"][:1]
    del entries[4]["image"]
    entries[6]["image"] = entries[0]["image"]
    json_path = tmp_path / "share.json"
    json_path.write_text(json.dumps(entries))
    return json_path, root, entries


def test_prepare_sharegpt4v_csvs_shards_and_reports(sharegpt4v, tmp_path):
    json_path, root, entries = sharegpt4v
    out, shards = tmp_path / "out", tmp_path / "shards"
    report = load_script("prepare_sharegpt4v").main([
        "--json", str(json_path), "--image-root", str(root), "--output-dir", str(out), "--num-val", "3",
        "--shards-dir", str(shards), "--samples-per-shard", "2", "--no-progress"])

    def expected_rows(indices):
        return [[str(root / entries[i]["image"]), normalise(entries[i]["conversations"][1]["value"]),
                 f"Summary {i} of the scene.", f"e{i}"] for i in indices]

    val, train = read_tsv(out / "sharegpt4v_val.csv"), read_tsv(out / "sharegpt4v_train.csv")
    assert list(train.columns) == ["filepath", "title", "short_title", "source_id"]
    assert val.values.tolist() == expected_rows([0, 2])        # 1: image missing
    assert train.values.tolist() == expected_rows([5, 7, 8])   # 3, 4 malformed; 6 shares validation's image
    assert not set(val.filepath) & set(train.filepath) and not set(val.source_id) & set(train.source_id)

    assert (out / "sharegpt4v_missing_images.txt").read_text().splitlines() == [str(root / entries[1]["image"])]
    malformed = read_tsv(out / "sharegpt4v_malformed.tsv")
    assert malformed[["index", "id"]].values.tolist() == [["3", "e3"], ["4", "e4"]]
    assert "gpt" in malformed.reason[0] and "image" in malformed.reason[1]
    assert (report["missing_images"], report["malformed_entries"], report["train_entries_sharing_val_images"]) \
        == (1, 2, 1)

    for split, table in (("train", train), ("val", val)):
        urls = list(braceexpand.braceexpand(report[f"{split}_shards"]))
        samples = read_shards_with_webdataset(urls)
        assert [s["txt"].decode() for s in samples] == table.title.tolist()
        assert [s["short.txt"].decode() for s in samples] == table.short_title.tolist()
        assert [json.loads(s["json"])["original_path"] for s in samples] == table.filepath.tolist()
    assert read_json(shards / "sizes.json") == {"sharegpt4v-train-000000.tar": 2, "sharegpt4v-train-000001.tar": 1,
                                                "sharegpt4v-val-000000.tar": 2}


def test_sharegpt4v_csv_loads_in_open_clip_train(sharegpt4v, tmp_path):
    from open_clip_train.data import CsvDataset

    json_path, root, entries = sharegpt4v
    load_script("prepare_sharegpt4v").main(["--json", str(json_path), "--image-root", str(root), "--output-dir",
                                            str(tmp_path), "--num-val", "3", "--no-progress"])
    dataset = CsvDataset(str(tmp_path / "sharegpt4v_train.csv"), transforms=lambda image: image.size,
                         img_key="filepath", caption_key="short_title", tokenizer=lambda texts: texts)
    assert [dataset[i] for i in range(len(dataset))] == [((6, 5), f"Summary {i} of the scene.") for i in (5, 7, 8)]


def test_sharegpt4v_missing_policies_and_relative_paths(sharegpt4v, tmp_path):
    json_path, root, entries = sharegpt4v
    script = load_script("prepare_sharegpt4v")
    common = ["--json", str(json_path), "--image-root", str(root), "--num-val", "3", "--no-progress"]

    with pytest.raises(FileNotFoundError, match="1 image"):
        script.main(common + ["--output-dir", str(tmp_path / "a"), "--missing", "error"])
    assert not (tmp_path / "a" / "sharegpt4v_train.csv").exists()

    script.main(common + ["--output-dir", str(tmp_path / "b"), "--missing", "keep", "--relative-paths"])
    val = read_tsv(tmp_path / "b" / "sharegpt4v_val.csv")
    assert val.filepath.tolist() == [entries[i]["image"] for i in (0, 1, 2)]

    with pytest.raises(SystemExit, match="entry 3"):
        script.main(common + ["--output-dir", str(tmp_path / "c"), "--strict"])


# ------------------------------------------------------------------------------------------------ DCI

def test_prepare_dci_keeps_non_empty_extra_captions(tmp_path):
    base = tmp_path / "densely_captioned_images"
    annotations = base / "annotations"
    annotations.mkdir(parents=True)
    extra = {"a": "A long\ndescription.", "b": "", "c": "  \n ", "d": "Image is gone.", "e": "Tabs\there."}
    for name, text in extra.items():
        record = {"image": f"sa_{name}.jpg", "short_caption": f"short {name}", "extra_caption": text,
                  "mask_data": {}, "mask_keys": []}
        (annotations / f"{name}.json").write_text(json.dumps(record))
        if name != "d":
            tiny_image(base / "photos" / f"sa_{name}.jpg", seed=ord(name))
    (annotations / "README.txt").write_text("not an annotation")
    output = tmp_path / "dci_long.csv"

    summary = load_script("prepare_dci").main(["--annotations-dir", str(annotations), "--output", str(output),
                                               "--no-progress"])

    table = read_tsv(output)
    assert list(table.columns) == ["filepath", "title"]
    assert table.values.tolist() == [[str(base / "photos" / f"sa_{n}.jpg"), normalise(extra[n])] for n in ("a", "e")]
    assert (tmp_path / "dci_long_missing_images.txt").read_text().splitlines() == [str(base / "photos" / "sa_d.jpg")]
    assert (tmp_path / "dci_long_empty_extra_caption.txt").read_text().splitlines() == [
        str(annotations / "b.json"), str(annotations / "c.json")]
    assert (summary["annotation_files"], summary["pairs"], summary["empty_extra_caption"]) == (5, 2, 2)

    (annotations / "f.json").write_text(json.dumps({"image": "sa_f.jpg", "short_caption": "no extra"}))
    with pytest.raises(ValueError, match=r"f\.json.*extra_caption"):
        load_script("prepare_dci").main(["--annotations-dir", str(annotations), "--output", str(output)])


# ------------------------------------------------------------------------------------------ packer CLI

def test_pack_folder_and_coco_sources(tmp_path):
    script = load_script("pack_webdataset")
    folder = tmp_path / "folder"
    tiny_image(folder / "a" / "x.jpg", 0)
    (folder / "txt").mkdir()
    (folder / "txt" / "x.txt").write_text("First caption. Extra.\nSecond caption.\n")
    tiny_image(folder / "lonely.png", 1)
    (folder / "stray.txt").write_text("no image")

    result = script.main(["folder", "--root", str(folder), "--output-dir", str(tmp_path / "s"), "--prefix", "f",
                          "--caption-policy", "each", "--no-progress"])

    samples = read_shards_with_webdataset([str(tmp_path / "s" / "f-000000.tar")])
    assert [(s["txt"], s["short.txt"]) for s in samples] == [(b"First caption. Extra.", b"First caption."),
                                                            (b"Second caption.", b"Second caption.")]
    assert result.total_samples == 2
    assert (tmp_path / "s" / "f_orphan_images.txt").read_text().splitlines() == [str(folder / "lonely.png")]
    assert (tmp_path / "s" / "f_orphan_texts.txt").read_text().splitlines() == [str(folder / "stray.txt")]

    coco = {"images": [{"id": 1, "file_name": "a/x.jpg"}, {"id": 2, "file_name": "lonely.png"}],
            "annotations": [{"image_id": 2, "caption": "Lonely."}, {"image_id": 1, "caption": "X."}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    result = script.main(["coco", "--annotations", str(tmp_path / "coco.json"), "--image-root", str(folder),
                          "--output-dir", str(tmp_path / "s"), "--prefix", "c", "--samples-per-shard", "1",
                          "--no-progress"])
    assert result.pattern == "c-{000000..000001}.tar"
    samples = read_shards_with_webdataset([os.path.join(tmp_path, "s", n) for n in ("c-000000.tar", "c-000001.tar")])
    assert [(s["txt"], "jpg" in s, "png" in s) for s in samples] == [(b"X.", True, False), (b"Lonely.", False, True)]
    assert read_json(tmp_path / "s" / "sizes.json") == {"f-000000.tar": 2, "c-000000.tar": 1, "c-000001.tar": 1}
