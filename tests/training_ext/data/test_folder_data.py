"""Folder datasets (x.jpg + x.txt anywhere under the root): pairing, caption lines per epoch, orphans."""
import logging

import open_clip
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import open_clip_ext  # noqa: F401  (registers the tiny configs)

from support.data_prep_fixtures import tiny_image
from training_ext.common.captions import first_sentence
from training_ext.data.folder import FolderDataset, parse_short_line
from training_ext.data.keyed_captions import folder_captions

LINES = [f"Caption line {n} about a lighthouse. It has {n} windows." for n in range(4)]


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "data"
    tiny_image(root / "a" / "one.jpg", seed=1)
    (root / "a" / "one.txt").write_text("\n".join(LINES) + "\n")
    tiny_image(root / "b" / "c" / "two.png", seed=2)
    (root / "captions").mkdir()
    (root / "captions" / "two.txt").write_text("A single caption. With two sentences.\n\n")
    tiny_image(root / "orphan.jpg", seed=3)
    tiny_image(root / "empty.jpg", seed=4)
    (root / "empty.txt").write_text("\n   \n")
    (root / "lonely.txt").write_text("no image for me\n")
    return root


def test_pairs_orphans_and_first_line_mode(folder, caplog):
    tokenize = open_clip.get_tokenizer("tiny-clip-rope-248")
    with caplog.at_level(logging.WARNING):
        data = FolderDataset(str(folder), tokenize, caption_line="first", short_line=parse_short_line("1"))
    assert len(data) == 2
    assert "1 images without a caption file" in caplog.text
    assert "1 caption files without an image" in caplog.text
    assert "1 empty caption files" in caplog.text
    one = [i for i, item in enumerate(data.items) if item.image.endswith("one.jpg")][0]
    two = 1 - one
    assert data.caption(one) == LINES[0] and data.short_caption(one) == LINES[1]
    assert data.short_caption(two) == "A single caption."  # no line 1: the first sentence
    assert torch.equal(data[one][0], tokenize([LINES[0]])[0])
    assert data.key(one) == "a/one#0" and data.key(two) == "b/c/two#0"


def test_random_line_changes_with_the_epoch_and_reaches_workers(folder):
    tokenize = open_clip.get_tokenizer("tiny-clip-rope-248")
    data = FolderDataset(str(folder), tokenize, caption_line="random", short_line="random", seed=7)
    one = [i for i, item in enumerate(data.items) if item.image.endswith("one.jpg")][0]
    drawn = []
    for epoch in range(12):
        data.shared_epoch.set_value(epoch)
        line = data.line_of(one)
        assert data.caption(one) == LINES[line] and data.key(one) == f"a/one#{line}"
        assert data.short_caption(one) in LINES and data.short_caption(one) != LINES[line]
        drawn.append(line)
    assert len(set(drawn)) > 1
    data.shared_epoch.set_value(5)
    assert data.line_of(one) == drawn[5]  # deterministic in (seed, epoch, image)
    loader = DataLoader(data, batch_size=None, num_workers=1, sampler=[one])
    (ids,) = next(iter(loader))
    assert torch.equal(ids, tokenize([LINES[drawn[5]]])[0])
    # Every (image, line) key a run can draw is one the teacher cache precomputes.
    assert {r.key for r in folder_captions(str(folder))} == {f"a/one#{n}" for n in range(4)} | {"b/c/two#0"}


def test_image_samples_and_unreadable_images(folder):
    tokenize = open_clip.get_tokenizer("tiny-clip")
    _, _, preprocess = open_clip.create_model_and_transforms("tiny-clip")
    data = FolderDataset(str(folder), tokenize, transform=preprocess, caption_line="first")
    two = [i for i, item in enumerate(data.items) if item.image.endswith("two.png")][0]
    image, long_ids, short_ids = data[two]
    assert torch.equal(image, preprocess(Image.open(folder / "b" / "c" / "two.png").convert("RGB")))
    assert torch.equal(short_ids, tokenize([first_sentence("A single caption. With two sentences.")])[0])
    (folder / "b" / "c" / "two.png").write_bytes(b"broken")
    assert data[two] is None  # an undecodable image is skipped (the loader's collate drops it) and counted
    assert data.skips.counts() == {"image cannot be decoded": 1}
    with pytest.raises(ValueError, match="line number"):
        parse_short_line("second")
