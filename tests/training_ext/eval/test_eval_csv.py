"""`--csv NAME=PATH`: any open_clip caption CSV as a named benchmark (the demo's test splits use it), its rows
grouped by image file when an image has several captions."""
import json
import os
import random

import open_clip
import pytest
import torch

from training_ext.eval.runner import main

from support.benchmark_fixtures import caption_text, make_long_dci, write_image
from support.naive_retrieval import build_model, naive_image_features, naive_metrics, naive_text_features


def test_caption_csv_benchmark_equals_the_same_file_read_as_long_dci(tmp_path):
    csv_path, _ = make_long_dci(str(tmp_path / "dci"))
    common = ["--model", "tiny-clip-rope-248", "--workers", "0", "--no-progress", "--device", "cpu"]
    main([*common, "--long-dci", csv_path, "--output-dir", str(tmp_path / "a")])
    main([*common, "--csv", f"held-out={csv_path}", "--output-dir", str(tmp_path / "b")])
    as_dci = json.loads((tmp_path / "a" / "results.json").read_text())["results"][0]
    as_csv = json.loads((tmp_path / "b" / "results.json").read_text())["results"][0]
    assert as_csv["benchmark"] == "held-out" and "open_clip caption CSV" in as_csv["protocol"]
    assert as_csv["metrics"] == as_dci["metrics"] and as_csv["num_images"] == as_dci["num_images"]


@pytest.mark.parametrize("entry", ["no-equals-sign", "=path.csv", "urban1k=x.csv"])
def test_bad_csv_benchmark_entries_are_refused(entry, capsys):
    with pytest.raises(SystemExit):
        main(["--model", "tiny-clip", "--csv", entry])
    assert "--csv" in capsys.readouterr().err


def _several_captions_csv(root):
    """4 images x 2 captions, one row per caption (open_clip's layout), the images' rows interleaved and one path
    spelt another way; a per-row column 'which' (the caption's number within its image). Returns (CSV path, the
    image files in order of first appearance, the captions in row order, caption -> image)."""
    rng = random.Random(5)
    images = [os.path.join(root, "photos", f"{i}.jpg") for i in range(4)]
    for path in images:
        write_image(path, rng)
    rows, captions, caption_image = [], [], []
    for which in range(2):
        for i in range(4):
            spelt = f"photos/{i}.jpg" if (i, which) != (2, 1) else f"photos/../photos/{i}.jpg"
            captions.append(caption_text(rng, 10 * i + which, 8))
            caption_image.append(i)
            rows.append(f"{spelt}\t{captions[-1]}\t{which}")
    path = os.path.join(root, "held_out.csv")
    with open(path, "w") as handle:
        handle.write("filepath\ttitle\twhich\n" + "\n".join(rows) + "\n")
    return path, images, captions, caption_image


def test_a_csv_with_several_captions_per_image_ranks_each_image_once(tmp_path):
    from training_ext.eval.datasets import read_long_dci
    csv_path, images, captions, caption_image = _several_captions_csv(str(tmp_path / "data"))
    checkpoint = str(tmp_path / "model.pt")
    torch.manual_seed(3)
    torch.save(open_clip.create_model("tiny-clip-rope-248").state_dict(), checkpoint)
    main(["--model", f"tiny-clip-rope-248:{checkpoint}", "--csv", f"held-out={csv_path}", "--bucket-by-column",
          "which", "--workers", "0", "--no-progress", "--device", "cpu", "--output-dir", str(tmp_path / "out")])
    result = json.loads((tmp_path / "out" / "results.json").read_text())["results"][0]

    # the test's own computation: every image once, every caption of it a correct image->text hit
    model, preprocess, tokenizer = build_model("tiny-clip-rope-248", checkpoint=checkpoint)
    similarity = naive_image_features(model, preprocess, images) @ naive_text_features(model, tokenizer, captions).T
    expected, _, text_ranks = naive_metrics(similarity, caption_image)
    assert (result["num_images"], result["num_captions"]) == (4, 8)
    assert result["metrics"] == pytest.approx(expected)
    card = result["protocol_card"]
    assert (card["num_images"], card["num_captions"]) == (4, 8) and "grouped by image file" in result["protocol"]
    assert any("8 rows name 4 distinct image files" in note for note in card["notes"])
    # one image per row instead ranks each image's copies against each other: their ties count against the model
    rows_as_images = naive_metrics(similarity[caption_image], list(range(8)))[0]
    assert rows_as_images["text_to_image_R@1"] == 0.0

    # --bucket-by-column still reads one value per caption, in row order: caption c is row c
    buckets = {row["bucket"]: row for row in result["recall_by_column"]["buckets"]}
    for which in ("0", "1"):
        mine = [c for c in range(8) if c // 4 == int(which)]
        assert buckets[which]["num_captions"] == 4
        assert buckets[which]["text_to_image_R@1"] == pytest.approx(100.0 * sum(text_ranks[c] < 1 for c in mine) / 4)

    # --long-dci keeps TULIP's one image per row
    assert len(read_long_dci(csv_path).image_paths) == 8
