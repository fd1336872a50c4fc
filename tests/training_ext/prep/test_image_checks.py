"""What data preparation checks of an image without decoding it (its first bytes), and that a file which is not an
image (an HTML error page saved as 1.jpg) is listed with its reason, never written into a CSV unlisted."""
import json

import pandas as pd
import pytest
from PIL import Image

from training_ext.common.image_files import image_file_problem
from training_ext.prep.cli import run_main
from training_ext.prep.shard_writer import pack_shards
from training_ext.prep.sources import make_sample

from support.data_prep_fixtures import load_script, tiny_image

HTML = "<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body>Not Found</body></html>\n"


def read_tsv(path):
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


@pytest.mark.parametrize("name, image_format", [("a.jpg", None), ("a.png", None), ("png_named.jpg", "PNG"),
                                                ("a.webp", None), ("a.gif", None), ("a.bmp", None),
                                                ("a.tiff", None), ("a.ppm", None), ("a.ico", None)])
def test_every_format_pil_opens_passes_whatever_its_extension(tmp_path, name, image_format):
    """The common formats by their signature; PPM and ICO (no signature listed) through PIL's own header parse."""
    path = tiny_image(tmp_path / name, seed=1, size=(16, 16), image_format=image_format)
    with Image.open(path) as image:  # the reference: PIL identifies it
        assert image.format
    assert image_file_problem(path) is None


def test_files_that_are_not_images_are_named_with_a_reason(tmp_path):
    html, empty, text, folder = tmp_path / "1.jpg", tmp_path / "2.jpg", tmp_path / "3.jpg", tmp_path / "4.jpg"
    html.write_text(HTML)
    empty.write_bytes(b"")
    text.write_bytes(b"\x00\x01 some bytes\n")
    folder.mkdir()
    assert image_file_problem(str(html)) == "not an image: an HTML page"
    assert image_file_problem(str(empty)) == "empty (0 bytes)"
    assert image_file_problem(str(text)) == "not an image: a file starting with b'\\x00\\x01 some bytes\\n'"
    assert image_file_problem(str(folder)).startswith("cannot be read (")
    assert image_file_problem(str(tmp_path / "gone.jpg")) == "missing"


def _entry(i, image):
    return {"id": f"e{i}", "image": image,
            "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": f"Caption {i}."}]}


def test_sharegpt4v_lists_an_html_page_saved_as_jpg_and_leaves_it_out(tmp_path):
    root = tmp_path / "data"
    entries = [_entry(i, f"coco/{i}.jpg") for i in range(4)]
    for i in range(4):
        tiny_image(root / f"coco/{i}.jpg", seed=i)
    (root / "coco/1.jpg").write_text(HTML)
    json_path = tmp_path / "share.json"
    json_path.write_text(json.dumps(entries))
    script = load_script("prepare_sharegpt4v")
    common = ["--json", str(json_path), "--image-root", str(root), "--num-val", "2", "--no-progress"]

    report = script.main(common + ["--output-dir", str(tmp_path / "out")])
    out = tmp_path / "out"
    assert read_tsv(out / "sharegpt4v_val.csv").filepath.tolist() == [str(root / "coco/0.jpg")]
    unreadable = read_tsv(out / "sharegpt4v_unreadable_images.tsv")
    assert unreadable.values.tolist() == [[str(root / "coco/1.jpg"), "not an image: an HTML page"]]
    assert (out / "sharegpt4v_missing_images.txt").read_text() == ""
    assert (report["unreadable_images"], report["missing_images"], report["val_rows"]) == (1, 0, 1)

    with pytest.raises(FileNotFoundError, match=r"1 image\(s\) missing or not images .*coco/1\.jpg: not an image"):
        script.main(common + ["--output-dir", str(tmp_path / "strict"), "--missing", "error"])
    report = script.main(common + ["--output-dir", str(tmp_path / "kept"), "--missing", "keep"])
    assert report["val_rows"] == 2 and report["unreadable_images"] == 1  # kept, and still listed


def test_dci_lists_an_html_page_saved_as_jpg(tmp_path):
    annotations = tmp_path / "dci" / "annotations"
    annotations.mkdir(parents=True)
    for name in ("a", "b"):
        (annotations / f"{name}.json").write_text(json.dumps({"image": f"{name}.jpg", "extra_caption": "Long."}))
    tiny_image(tmp_path / "dci" / "photos" / "a.jpg", seed=0)
    (tmp_path / "dci" / "photos" / "b.jpg").write_text(HTML)
    output = tmp_path / "dci_long.csv"
    summary = load_script("prepare_dci").main(["--annotations-dir", str(annotations), "--output", str(output),
                                               "--no-progress"])
    assert read_tsv(output).filepath.tolist() == [str(tmp_path / "dci" / "photos" / "a.jpg")]
    assert read_tsv(tmp_path / "dci_long_unreadable_images.tsv").values.tolist() == [
        [str(tmp_path / "dci" / "photos" / "b.jpg"), "not an image: an HTML page"]]
    assert (summary["pairs"], summary["unreadable_images"]) == (1, 1)


def test_shards_skip_an_html_page_saved_as_jpg_with_its_reason(tmp_path):
    good = tiny_image(tmp_path / "0.jpg", seed=0)
    (tmp_path / "1.jpg").write_text(HTML)
    samples = [make_sample(good, "A caption.", "s0"), make_sample(str(tmp_path / "1.jpg"), "Another.", "s1")]
    result = pack_shards(samples, str(tmp_path / "shards"), "t", progress=False)
    assert result.total_samples == 1
    assert [(s["path"], s["reason"].split(":")[0]) for s in result.skipped] == [(str(tmp_path / "1.jpg"),
                                                                                 "unreadable")]


def test_the_script_stops_with_one_error_line(tmp_path):
    """As a command (its __main__ runs run_main), --missing error ends in one line naming the file and why."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "0.jpg").write_text(HTML)
    (tmp_path / "share.json").write_text(json.dumps([_entry(0, "0.jpg")]))
    script = load_script("prepare_sharegpt4v")
    argv = ["--json", str(tmp_path / "share.json"), "--image-root", str(tmp_path / "data"), "--output-dir",
            str(tmp_path / "out"), "--missing", "error", "--no-progress"]
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: script.main(argv))
    message = str(exit_info.value.code)
    assert message.startswith("error: 1 image(s) missing or not images") and "\n" not in message
    assert f"{tmp_path / 'data' / '0.jpg'}: not an image: an HTML page" in message
