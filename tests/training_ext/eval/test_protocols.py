"""The pinned long-caption protocols (DOCCI, GOAL's DOCCI, IIW, DCI as LoTLIP/FLAIR and as FG-CLIP, LoTLIP's
ShareGPT4V SAM subsets, COCO Karpathy with all captions), each read from a fixture in its release layout and
checked against the fixture's own bookkeeping; the pairing checks; the protocol card and its sha256."""
import hashlib
import json
import os
import re
import shutil
from dataclasses import asdict

import pytest
import torch

from training_ext.eval.datasets import (BENCHMARKS, CHECKED, BenchmarkError, lotlip_normalise, read_coco_karpathy,
                                        read_dci_extra_caption, read_dci_fgclip, read_dci_lotlip, read_docci_goal,
                                        read_docci_test, read_iiw, read_iiw_flair, read_sharegpt4v_lotlip,
                                        read_urban1k)
from training_ext.eval.protocol_card import dataset_card, format_card, image_keys, model_card

from support.benchmark_fixtures import (make_coco_karpathy, make_dci, make_docci, make_iiw, make_iiw_flair,
                                        make_sharegpt4v, make_urban1k)


def lists(retrieval_set):
    """The three lists a reader must get right (skipped files and notes are checked where a protocol has any)."""
    return {key: value for key, value in asdict(retrieval_set).items() if key not in ("skipped", "notes")}


@pytest.mark.parametrize("text, expected", [
    ("A dog. A cat.", "A dog. A cat"),
    ("First line\nsecond line</s>third. ", "First line. second line. third"),
    ("e.g. 3.5 m..", "e. g. 3. 5 m"),  # every '.' splits, as LoTLIP's re.split does
    (" \n . </s>", ""),
])
def test_lotlip_normalisation_hand_cases(text, expected):
    assert lotlip_normalise(text) == expected


def test_docci_test_split_and_goal_variant(tmp_path):
    root, expected_test, expected_goal = make_docci(str(tmp_path))
    assert lists(read_docci_test(root)) == expected_test
    assert len(expected_test["captions"]) == 3
    goal = read_docci_goal(root)
    assert lists(goal) == expected_goal
    assert [os.path.basename(p) for p in goal.image_paths] == [
        "qual_test_00000.jpg", "qual_test_00001.jpg", "test_00000.jpg", "test_00001.jpg", "test_00002.jpg"]


def test_docci_stops_on_a_missing_image_and_a_repeated_one(tmp_path):
    root, expected_test, _ = make_docci(str(tmp_path))
    os.remove(expected_test["image_paths"][1])
    with pytest.raises(BenchmarkError, match=r"DOCCI: 1 of 3 images are missing.*test_00001\.jpg"):
        read_docci_test(root)
    rows = [json.loads(line) for line in open(os.path.join(root, "docci_descriptions.jsonlines"))]
    rows[4]["image_file"] = rows[1]["image_file"]
    with open(os.path.join(root, "docci_descriptions.jsonlines"), "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    with pytest.raises(BenchmarkError, match=r"one description per image.*test_00000\.jpg"):
        read_docci_test(root)


def test_iiw_reads_the_three_parts_in_lotlip_order(tmp_path):
    root, expected = make_iiw(str(tmp_path), counts=(2, 3, 2))
    result = read_iiw(root)
    assert lists(result) == expected
    assert [p.split(os.sep)[-2] for p in result.image_paths] == ["docci"] * 2 + ["docci_aar"] * 3 + ["dci"] * 2
    # the images may live elsewhere (LoTLIP keeps the data.jsonl files in its repository)
    moved = str(tmp_path / "images")
    for folder in ("docci", "docci_aar", "dci"):
        shutil.move(os.path.join(root, folder), os.path.join(moved, folder))
    with pytest.raises(BenchmarkError, match="IIW: 7 of 7 images are missing"):
        read_iiw(root)
    assert read_iiw(root, moved).captions == expected["captions"]


def test_iiw_names_a_row_without_image_key(tmp_path):
    root, _ = make_iiw(str(tmp_path))
    path = os.path.join(root, "IIW-400", "data.jsonl")
    rows = [json.loads(line) for line in open(path)]
    del rows[1]["image/key"]
    with open(path, "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    with pytest.raises(BenchmarkError, match=r"IIW-400.data\.jsonl line 2: neither 'image' nor 'image/key'"):
        read_iiw(root)


def test_dci_as_lotlip_as_fgclip_and_with_the_extra_caption(tmp_path):
    root, expected_lotlip, expected_extra, expected_fgclip, unlisted = make_dci(str(tmp_path))
    lotlip, extra, fgclip = read_dci_lotlip(root), read_dci_extra_caption(root), read_dci_fgclip(root)
    assert lists(lotlip) == expected_lotlip
    assert lists(extra) == expected_extra
    # the annotation file splits.json does not list is left out by LoTLIP's reader, and named
    assert lotlip.skipped == unlisted and extra.skipped == unlisted
    # FG-CLIP's reader lists annotations/: the unlisted file is a pair too (8 where LoTLIP's list gives 7)
    assert lists(fgclip) == expected_fgclip and fgclip.skipped == []
    assert (len(fgclip.captions), len(lotlip.captions)) == (8, 7)
    # blank captions are kept (the peers tokenize them) and counted in the card
    assert dataset_card(BENCHMARKS["dci-lotlip"], lotlip)["blank_captions"] == 1
    card = dataset_card(BENCHMARKS["dci-fgclip"], fgclip)
    assert (card["blank_captions"], card["skipped_files"]) == (2, 0)
    # the folder's size is not fixed by FG-CLIP's reader, so no count is promised
    assert card["protocol"] == "dci-annotations-fgclip" and card["release_counts"] is None
    assert "224x224" in card["image_transform"] and "b08f665" in card["follows"]
    assert card["notes"] == ["annotation files: all 8 entries of annotations/ (FG-CLIP lists the folder; "
                             "splits.json is not read), in name order"]
    assert dataset_card(BENCHMARKS["dci-lotlip"], lotlip)["image_transform"].startswith("none")


def test_fgclip_dci_stops_on_an_entry_that_is_not_an_annotation(tmp_path):
    root, *_ = make_dci(str(tmp_path))
    stray = os.path.join(root, "densely_captioned_images", "annotations", "README.txt")
    with open(stray, "w") as f:
        f.write("not json")
    with pytest.raises(BenchmarkError, match=r"README\.txt.*move what is not a DCI annotation file out"):
        read_dci_fgclip(root)
    assert len(read_dci_lotlip(root).captions) == 7  # LoTLIP's reader never opens it


def test_fgclip_resize_comes_before_the_models_preprocess(tmp_path):
    """FG-CLIP@b08f665 dci_retrieval.py: image.resize((224, 224)) (PIL's default filter, bicubic) and then its
    processor. The evaluation's image pipeline must give exactly that, and differ from the plain preprocess on a
    photo that is not square."""
    import open_clip
    from PIL import Image
    from types import SimpleNamespace
    from training_ext.eval.runner import image_preprocess
    preprocess = open_clip.image_transform(64, is_train=False)
    photo = Image.new("RGB", (90, 30))
    for x in range(90):
        photo.putpixel((x, x % 30), (255, 3 * x % 256, 0))
    loaded = SimpleNamespace(preprocess=preprocess)
    expected = preprocess(photo.resize((224, 224)))
    assert torch.equal(image_preprocess(loaded, BENCHMARKS["dci-fgclip"])(photo), expected)
    assert not torch.equal(preprocess(photo), expected)
    assert image_preprocess(loaded, BENCHMARKS["dci-lotlip"]) is preprocess


def test_iiw_as_flair_reads_one_caption_per_sentence(tmp_path):
    json_path, expected = make_iiw_flair(str(tmp_path), sentences=(3, 1, 4, 2))
    result = read_iiw_flair(json_path)
    assert lists(result) == expected
    card = dataset_card(BENCHMARKS["iiw-flair"], result)
    assert (card["protocol"], card["num_images"], card["num_captions"]) == ("iiw-612-sentences-flair", 4, 10)
    assert card["release_counts"] == [612, 6204] and card["normalisation"].startswith("none")
    assert "0f9ce05" in card["follows"] and "finegrained" in card["follows"]


@pytest.mark.parametrize("change, message", [
    (lambda rows: rows[2].update(caption_id=7), r"annotations\[2\]: caption_id 7, expected 2"),
    (lambda rows: rows[4].update(image="dci/sa_1545038.jpg"),
     r"annotations\[4\]: image_id 1 names 'dci/sa_1545038.jpg', but an earlier entry gave it 'docci_aar/"),
    (lambda rows: rows[4].pop("caption"), r"annotations\[4\]: expected 'image_id', 'image', 'caption'"),
    (lambda rows: rows[6].update(image="dci/sa_1545038.jpg"), r"sa_1545038\.jpg appear under more than one image_id"),
])
def test_iiw_as_flair_stops_on_a_malformed_file(tmp_path, change, message):
    json_path, _ = make_iiw_flair(str(tmp_path), sentences=(3, 2, 1, 1))
    data = json.load(open(json_path))
    change(data["annotations"])
    json.dump(data, open(json_path, "w"))
    with pytest.raises(BenchmarkError, match=message):
        read_iiw_flair(json_path)


def test_dci_stops_on_a_listed_annotation_that_is_missing(tmp_path):
    root, *_ = make_dci(str(tmp_path))
    annotation = os.path.join(root, "densely_captioned_images", "annotations", "112958-data.json")
    os.remove(annotation)
    with pytest.raises(BenchmarkError, match=r"1 of 7 annotation files listed in .*splits\.json are missing.*112958"):
        read_dci_lotlip(root)


def test_sharegpt4v_sam_subsets_with_lotlip_normalisation(tmp_path):
    json_path, root, expected = make_sharegpt4v(str(tmp_path), count=6, extra=2, json_name="share4v_sam_10k.json")
    result = read_sharegpt4v_lotlip(json_path, root, count=6)
    assert result.captions == expected["lotlip_captions"]
    assert (result.image_paths, result.caption_image) == (expected["image_paths"], expected["caption_image"])
    with pytest.raises(BenchmarkError, match="first 9 entries, the file has 8"):
        read_sharegpt4v_lotlip(json_path, root, count=9)


def test_coco_karpathy_test_split_with_all_captions(tmp_path):
    json_path, expected, coco = make_coco_karpathy(str(tmp_path))
    result = read_coco_karpathy(json_path)
    assert lists(result) == expected
    assert len(result.image_paths) == 4 and len(result.captions) == 5 + 7 + 5 + 6
    assert "not compared" in result.notes[0]
    # clip_benchmark's text: COCO's captions of the same images, each image's in annotation order
    with_coco = read_coco_karpathy(json_path, captions_path=coco["path"])
    assert lists(with_coco) == coco["expected"] and with_coco.captions != result.captions
    # a reordering is not a difference; the trailing space and the double space are
    assert with_coco.notes == [f"captions: COCO's captions_val2014.json (clip_benchmark's text); {coco['differing']} "
                               f"of 23 are not repeated verbatim by Karpathy's sentences[].raw"]


def test_coco_karpathy_stops_when_the_coco_file_lacks_a_test_image(tmp_path):
    json_path, _, coco = make_coco_karpathy(str(tmp_path))
    data = json.load(open(coco["path"]))
    data["images"] = [image for image in data["images"] if image["id"] != 42]
    json.dump(data, open(coco["path"], "w"))
    with pytest.raises(BenchmarkError, match=r"1 of 4 Karpathy test images are not in it.*COCO_val2014_000000000042"):
        read_coco_karpathy(json_path, captions_path=coco["path"])


def test_every_checked_protocol_names_a_peer_commit():
    for benchmark in BENCHMARKS.values():
        if benchmark.verified.startswith(CHECKED):
            assert re.search(r"@[0-9a-f]{7}", benchmark.peer), benchmark.name
    assert "LoTLIP@7aa4447" in BENCHMARKS["iiw"].peer and "b3a369c" not in BENCHMARKS["dci-lotlip"].peer


def test_urban1k_stops_on_an_unpaired_file_in_either_direction(tmp_path):
    root, expected = make_urban1k(str(tmp_path), count=16)
    os.remove(os.path.join(root, "caption", "105.txt"))
    with pytest.raises(BenchmarkError, match=r"unpaired.*1 of 16 images have no caption file.*105\.jpg"):
        read_urban1k(root)
    other, _ = make_urban1k(str(tmp_path / "b"), count=4)
    os.remove(os.path.join(other, "image", "101.jpg"))
    with pytest.raises(BenchmarkError, match=r"1 of 4 caption files have no image.*101\.txt"):
        read_urban1k(other)


def test_blank_caption_follows_the_reference_protocol(tmp_path):
    root, _ = make_urban1k(str(tmp_path), count=4)
    with open(os.path.join(root, "caption", "102.txt"), "w") as f:
        f.write("   \nthe second line is not read\n")
    data = read_urban1k(root)  # Long-CLIP/TULIP tokenize the first line whatever it holds
    assert data.captions[2] == "" and len(data.captions) == 4
    card = dataset_card(BENCHMARKS["urban1k"], data)
    assert card["blank_captions"] == 1 and card["num_captions"] == 4


def expected_sha256(keys_and_captions):
    digest = hashlib.sha256()
    for key, caption in keys_and_captions:
        digest.update((json.dumps([key, caption], ensure_ascii=False) + "\n").encode("utf-8"))
    return digest.hexdigest()


def test_card_sha256_is_stable_and_sees_a_one_caption_change(tmp_path):
    first, expected = make_urban1k(str(tmp_path / "a"), count=6)
    second, _ = make_urban1k(str(tmp_path / "elsewhere" / "b"), count=6)
    card = dataset_card(BENCHMARKS["urban1k"], read_urban1k(first))
    # independent computation: file names relative to the image folder, one JSON line per caption
    assert card["sha256"] == expected_sha256(
        [(os.path.basename(p), c) for p, c in zip(expected["image_paths"], expected["captions"])])
    assert dataset_card(BENCHMARKS["urban1k"], read_urban1k(first))["sha256"] == card["sha256"]
    assert dataset_card(BENCHMARKS["urban1k"], read_urban1k(second))["sha256"] == card["sha256"]  # any folder
    with open(os.path.join(second, "caption", "103.txt"), "w") as f:
        f.write(expected["captions"][3].replace("shows", "shows a"))
    assert dataset_card(BENCHMARKS["urban1k"], read_urban1k(second))["sha256"] != card["sha256"]


def test_card_names_protocol_counts_context_cut_ties_and_precision(tmp_path):
    root, expected = make_iiw(str(tmp_path))
    data = read_iiw(root)
    ties = {"image_to_text": {"queries": 7, "queries_with_tied_negatives": 2,
                              "R@1": {"reported": 100 * 3 / 7, "optimistic": 100 * 5 / 7, "decided_by_ties": 2}},
            "text_to_image": {"queries": 7, "queries_with_tied_negatives": 0,
                              "R@1": {"reported": 100 * 4 / 7, "optimistic": 100 * 4 / 7, "decided_by_ties": 0}}}
    card = model_card(dataset_card(BENCHMARKS["iiw"], data), [10, 80, 100, 77, 300, 5, 6], 77, "against",
                      "amp_bf16", ties)
    assert card["protocol"] == "iiw-612-lotlip" and "LoTLIP@7aa4447" in card["follows"]
    assert card["verified"] == CHECKED and card["image_transform"].startswith("none")
    assert (card["num_images"], card["num_captions"]) == (7, 7)
    assert card["release_counts"] == [612, 612] and card["matches_release"] is False
    assert card["captions_over_context"] == 3 and card["mean_tokens_cut"] == pytest.approx((3 + 23 + 223) / 3)
    assert (card["tie_rule"], card["ties"], card["precision"]) == ("against", ties, "amp_bf16")
    assert "split on newlines" in card["normalisation"]
    text = format_card(card, "tiny-clip")
    for fragment in ("iiw-612-lotlip", "7 images, 7 captions", "NOT the full set", card["sha256"],
                     "3 captions longer", "against", "amp_bf16", CHECKED,
                     "I2T R@1 42.86 (ties allow up to 71.43: 2 of 7 queries tied at the decisive rank)",
                     "T2I R@1 57.14 (no query decided by a tie)"):
        assert fragment in text
    assert image_keys(data.image_paths)[0] == "docci/test_01427.jpg"


def test_new_protocols_end_to_end_with_tie_bounds(tmp_path, capsys):
    from training_ext.eval.runner import main
    from support.naive_retrieval import build_model, naive_image_features, naive_metrics, naive_text_features

    docci, docci_test, _ = make_docci(str(tmp_path))
    iiw, iiw_expected = make_iiw(str(tmp_path))
    flair_json, flair_expected = make_iiw_flair(str(tmp_path))
    dci, dci_expected, _, fgclip_expected, _ = make_dci(str(tmp_path))
    coco_json, _, coco = make_coco_karpathy(str(tmp_path))
    out = tmp_path / "out"
    main(["--model", "tiny-clip-rope-248", "--docci", docci, "--iiw", iiw, "--iiw-flair", flair_json,
          "--dci-lotlip", dci, "--dci-fgclip", dci, "--coco-karpathy-5k", coco_json,
          "--coco-karpathy-captions", coco["path"], "--output-dir", str(out), "--workers", "0", "--no-progress"])
    results = {r["benchmark"]: r for r in json.loads((out / "results.json").read_text())["results"]}
    model, preprocess, tokenizer = build_model("tiny-clip-rope-248")

    def fgclip_preprocess(image):  # FG-CLIP's resize to 224x224 (PIL's default filter), then the model's own
        return preprocess(image.resize((224, 224)))

    for name, expected, image_preprocess in (
            ("docci", docci_test, preprocess), ("iiw", iiw_expected, preprocess),
            ("iiw-flair", flair_expected, preprocess), ("dci-lotlip", dci_expected, preprocess),
            ("dci-fgclip", fgclip_expected, fgclip_preprocess), ("coco-karpathy-5k", coco["expected"], preprocess)):
        similarity = (naive_image_features(model, image_preprocess, expected["image_paths"])
                      @ naive_text_features(model, tokenizer, expected["captions"]).t())
        metrics, _, _ = naive_metrics(similarity, expected["caption_image"])
        optimistic, _, _ = naive_metrics(similarity, expected["caption_image"], optimistic=True)
        result = results[name]
        assert result["metrics"] == pytest.approx(metrics, abs=1e-6), name
        for direction in ("image_to_text", "text_to_image"):
            for k in (1, 5, 10):
                entry = result["ties"][direction][f"R@{k}"]
                assert entry["reported"] == pytest.approx(metrics[f"{direction}_R@{k}"], abs=1e-6), name
                assert entry["optimistic"] == pytest.approx(optimistic[f"{direction}_R@{k}"], abs=1e-6), name
        card = result["protocol_card"]
        assert (card["num_images"], card["num_captions"]) == (len(expected["image_paths"]), len(expected["captions"]))
        assert card["tie_rule"] == result["tie_rule"] == "against" and card["ties"] == result["ties"]
    assert results["coco-karpathy-5k"]["protocol_card"]["notes"][0].startswith("captions: COCO's captions_val2014")
    printed = capsys.readouterr()
    assert printed.out.count("protocol card:") == 6 and "docci-test-5k" in printed.out
    assert "image transform: resized to 224x224" in printed.out
    assert "warning: iiw: the full release has 612 images" in printed.err
    assert "note: dci-lotlip: the protocol leaves out 1 file(s)" in printed.err
