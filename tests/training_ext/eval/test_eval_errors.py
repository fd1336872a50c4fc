"""Mistakes found before the first model (an output folder that cannot be written, a benchmark file that is not an
image), and a stop mid-run (an image whose data cannot be decoded) that keeps every finished result on disk."""
import json
import os
import random

import pytest
from torch._utils import ExceptionWrapper

from training_ext.eval.runner import main, unreadable_image

from support.benchmark_fixtures import caption_text, make_urban1k, write_image

COMMON = ["--workers", "0", "--no-progress", "--device", "cpu"]


def _caption_csv(root, count=4, seed=3):
    """A --csv benchmark of `count` images; returns (CSV path, its image paths)."""
    rng = random.Random(seed)
    images = [os.path.join(root, "photos", f"{i}.jpg") for i in range(count)]
    rows = ["filepath\ttitle"]
    for i, path in enumerate(images):
        write_image(path, rng, size=64)
        rows.append(f"{path}\t{caption_text(rng, i, 12)}")
    csv_path = os.path.join(root, "held.csv")
    with open(csv_path, "w") as f:
        f.write("\n".join(rows) + "\n")
    return csv_path, images


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("kind", ["under a file", "a file"])
def test_an_output_dir_that_cannot_be_written_stops_before_any_model(tmp_path, capsys, loads, kind):
    root, _ = make_urban1k(str(tmp_path / "urban"), count=4)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    out = a_file / "out" if kind == "under a file" else a_file
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", "tiny-clip", "--urban1k", root, "--output-dir", str(out), *COMMON])
    assert exit_info.value.code == 2 and loads == []
    line = _one_error_line(capsys.readouterr().err)
    assert f"--output-dir {out}" in line
    assert ("Not a directory" in line) if kind == "under a file" else ("is a file, not a folder" in line)


def test_html_page_saved_as_jpg_in_a_csv_benchmark_stops_before_any_model(tmp_path, capsys, loads):
    root, _ = make_urban1k(str(tmp_path / "urban"), count=4)
    csv_path, images = _caption_csv(str(tmp_path / "held"))
    with open(images[2], "w") as f:
        f.write("<!DOCTYPE html>\n<html><body>404 Not Found</body></html>\n")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", "tiny-clip", "--urban1k", root, "--csv", f"held={csv_path}", "--output-dir", str(out),
              *COMMON])
    assert exit_info.value.code == 2 and loads == [] and not out.exists()
    line = _one_error_line(capsys.readouterr().err)
    assert f"held ({csv_path}): image {images[2]}: not an image: an HTML page" in line


def test_an_undecodable_image_mid_run_stops_after_saving_every_finished_result(tmp_path, capsys, loads):
    """Two models; the second benchmark (a --csv) holds a JPEG cut short past its header: the first model's
    urban1k result is on disk when the stop comes, and the stop is one line naming the file and the benchmark."""
    root, _ = make_urban1k(str(tmp_path / "urban"), count=4)
    csv_path, images = _caption_csv(str(tmp_path / "held"))
    data = open(images[1], "rb").read()
    with open(images[1], "wb") as f:
        f.write(data[: len(data) * 2 // 3])  # the header stays whole: the preflight's check passes
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["--models", "tiny-clip", "tiny-clip-rope-248", "--urban1k", root, "--csv", f"held={csv_path}",
              "--output-dir", str(out), *COMMON])
    assert exit_info.value.code == 2 and loads == ["tiny-clip"]
    line = _one_error_line(capsys.readouterr().err)
    assert f"error: held ({csv_path}): cannot read image {images[1]}: " in line and "truncated" in line.lower()
    saved = json.loads((out / "results.json").read_text())
    assert [(r["model"], r["benchmark"]) for r in saved["results"]] == [("tiny-clip", "urban1k")]
    assert saved["complete"] is False and saved["models_pending"] == ["tiny-clip", "tiny-clip-rope-248"]
    assert "urban1k" in (out / "results.md").read_text()


def test_the_unreadable_image_is_named_when_a_dataloader_worker_raised_it():
    """A worker's error reaches the main process as its traceback text (torch's ExceptionWrapper)."""
    try:
        raise ValueError("cannot read image /data/b.jpg: image file is truncated (9 bytes not processed)")
    except ValueError:
        wrapper = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(ValueError) as raised:
        wrapper.reraise()
    assert "Traceback" in str(raised.value)
    assert unreadable_image(raised.value) == "/data/b.jpg: image file is truncated (9 bytes not processed)"
    assert unreadable_image(RuntimeError("cannot read image x")) is None
    assert unreadable_image(ValueError("shape mismatch")) is None
