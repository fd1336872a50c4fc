"""Source readers of the data preparation: folder pairing, COCO captions, open_clip CSVs."""
import json
import os

import pytest

from support.data_prep_fixtures import tiny_image
from training_ext.common.file_io import write_tsv
from training_ext.common.folder_pairs import pair_folder
from training_ext.prep.sources import check_images_exist, samples_from_coco, samples_from_csv, samples_from_folder


def write_text(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        handle.write(text)
    return str(path)


def test_pair_folder_pairs_beside_then_anywhere_and_counts_orphans(tmp_path):
    root = tmp_path / "data"
    far_image = tiny_image(root / "a" / "b" / "x.jpg", 0)
    far_text = write_text(root / "captions" / "x.txt", "far caption\n")
    near_image = tiny_image(root / "a" / "y.png", 1)
    near_text = write_text(root / "a" / "y.txt", "near caption\n")
    unclaimed_text = write_text(root / "other" / "y.txt", "loses to the one beside the image\n")
    lonely_image = tiny_image(root / "z.webp", 2)
    lonely_text = write_text(root / "t" / "lonely.txt", "no image\n")
    write_text(root / "notes.md", "neither image nor caption")

    pairs = pair_folder(str(root))

    assert sorted(pairs.pairs) == sorted([(far_image, far_text), (near_image, near_text)])
    assert pairs.orphan_images == [lonely_image]
    assert sorted(pairs.orphan_texts) == sorted([unclaimed_text, lonely_text])


def test_pair_folder_refuses_to_guess_between_two_captions(tmp_path):
    tiny_image(tmp_path / "img" / "q.jpg", 0)
    write_text(tmp_path / "c1" / "q.txt", "one")
    write_text(tmp_path / "c2" / "q.txt", "two")
    with pytest.raises(ValueError, match="q.jpg.*ambiguous"):
        pair_folder(str(tmp_path))


@pytest.mark.parametrize("policy", ["first", "each", "join"])
def test_folder_caption_policies(tmp_path, policy):
    image = tiny_image(tmp_path / "p.jpg", 0)
    write_text(tmp_path / "p.txt", "A red car.  It is parked.\n\n   A second\tcaption here.\nThird one.\n")
    tiny_image(tmp_path / "e.jpg", 1)
    empty = write_text(tmp_path / "e.txt", "\n   \n")
    lines = ["A red car. It is parked.", "A second caption here.", "Third one."]

    samples, empty_texts = samples_from_folder(pair_folder(str(tmp_path)), policy)

    assert empty_texts == [empty]
    expected = {"first": lines[:1], "each": lines, "join": [" ".join(lines)]}[policy]
    assert [s.caption for s in samples] == expected
    assert all(s.image_path == image for s in samples)
    assert all(s.extra["captions"] == lines for s in samples)
    # short caption: the caption up to its first sentence end
    assert [s.short_caption for s in samples] == [c[: c.index(".") + 1] for c in expected]


def test_coco_source_keeps_file_order_and_reports_uncaptioned(tmp_path):
    annotations = {
        "images": [{"id": 5, "file_name": "a.jpg"}, {"id": 7, "file_name": "sub/b.jpg"},
                   {"id": 9, "file_name": "c.jpg"}],
        "annotations": [{"image_id": 7, "caption": "B one.", "id": 1}, {"image_id": 5, "caption": "A one.", "id": 2},
                        {"image_id": 5, "caption": " A\ntwo. ", "id": 3}],
    }
    path = write_text(tmp_path / "captions.json", json.dumps(annotations))

    samples, uncaptioned = samples_from_coco(path, str(tmp_path / "imgs"), policy="each")

    assert [(s.image_path, s.caption) for s in samples] == [
        (str(tmp_path / "imgs" / "a.jpg"), "A one."), (str(tmp_path / "imgs" / "a.jpg"), "A two."),
        (str(tmp_path / "imgs" / "sub" / "b.jpg"), "B one.")]
    assert uncaptioned == [str(tmp_path / "imgs" / "c.jpg")]
    assert [s.extra["coco_image_id"] for s in samples] == [5, 5, 7]

    annotations["annotations"].append({"image_id": 11, "caption": "nobody's"})
    write_text(path, json.dumps(annotations))
    with pytest.raises(ValueError, match=r"annotations\[3\].*11"):
        samples_from_coco(path, str(tmp_path))


def test_csv_source_resolves_paths_and_keeps_awkward_captions(tmp_path):
    # standard CSV quoting: quotes survive the write and the read, and "NA" stays text
    rows = [("rel/a.jpg", 'He said "hi". Then left.', ""), (str(tmp_path / "abs.png"), "NA", "given short"),
            ("b.jpg", "Line one   line two. More.", "x")]
    path = tmp_path / "in.csv"
    write_tsv(str(path), ("img", "cap", "short"), rows)

    samples = samples_from_csv(str(path), "img", "cap", "short", image_root=str(tmp_path / "root"))

    assert [s.image_path for s in samples] == [str(tmp_path / "root" / "rel" / "a.jpg"), str(tmp_path / "abs.png"),
                                               str(tmp_path / "root" / "b.jpg")]
    assert [s.caption for s in samples] == ['He said "hi". Then left.', "NA", "Line one line two. More."]
    # a blank short caption falls back to the first sentence; a given one is kept
    assert [s.short_caption for s in samples] == ['He said "hi".', "given short", "x"]

    with pytest.raises(ValueError, match="'title'"):
        samples_from_csv(str(path), "img", "title")


def test_check_images_exist_lists_each_missing_image_once(tmp_path):
    present = tiny_image(tmp_path / "here.jpg", 0)
    gone = str(tmp_path / "gone.jpg")
    list_path = tmp_path / "missing.txt"

    assert check_images_exist([present, gone, gone], str(list_path)) == {gone: "missing"}
    assert list_path.read_text().splitlines() == [gone]
    with pytest.raises(FileNotFoundError, match="1 image"):
        check_images_exist([present, gone], str(list_path), policy="error")
