"""The synthetic long-caption dataset: determinism, open_clip's CSV format, and the late-detail property checked
with open_clip's own tokenizer (independently of the generator's built-in check)."""
import hashlib
import json

import numpy as np
import open_clip
import pandas as pd
import pytest
import torch
from PIL import Image

from training_ext.demo import colour_grids as synthetic
from training_ext.common.captions import first_sentence

SPLITS = ("train", "val", "test_ordinary", "test_late_detail")
SIZES = dict(n_train=40, n_val=8, n_test=24, group_size=4)


def _read(out_dir, split):
    return pd.read_csv(out_dir / synthetic.SPLIT_FILES[split], sep="\t")


def _split_digest(out_dir, split):
    """Hash of a split's captions and image pixels (paths differ between output folders)."""
    digest = hashlib.sha256()
    frame = _read(out_dir, split)
    for path, title in zip(frame["filepath"], frame["title"]):
        digest.update(title.encode())
        digest.update(np.asarray(Image.open(path)).tobytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("synthetic")
    meta = synthetic.generate_dataset(out_dir, seed=3, **SIZES)
    return out_dir, meta


def test_csvs_have_open_clip_columns_and_sizes(dataset):
    out_dir, meta = dataset
    expected_sizes = {"train": 40, "val": 8, "test_ordinary": 24, "test_late_detail": 24}
    for split in SPLITS:
        frame = _read(out_dir, split)
        assert list(frame.columns[:3]) == ["filepath", "title", "short_title"]
        assert len(frame) == expected_sizes[split] == meta["splits"][split]["n"]
        for path in frame["filepath"]:
            assert path.startswith("/")
            with Image.open(path) as image:
                assert image.size == (32, 32) and image.mode == "RGB"


def test_open_clip_training_csv_loader_reads_it(dataset):
    out_dir, _ = dataset
    from open_clip_train.data import CsvDataset

    def to_array(image):
        return torch.from_numpy(np.array(image))

    loader = CsvDataset(str(out_dir / "train.csv"), to_array, img_key="filepath", caption_key="title",
                        sep="\t", tokenizer=open_clip.get_tokenizer("ViT-B-32"))
    image, tokens = loader[0]
    assert image.shape == (32, 32, 3) and tokens.shape == (77,)
    # the 77-token view of a long caption is truncated: it ends in EOT at the last position
    assert int(tokens[-1]) == 49407


def test_short_caption_is_the_first_sentence(dataset):
    out_dir, _ = dataset
    for split in SPLITS:
        frame = _read(out_dir, split)
        for title, short in zip(frame["title"], frame["short_title"]):
            assert first_sentence(title) == short
            assert len(title) > 3 * len(short)


def test_late_detail_groups_agree_on_77_tokens_and_differ_after(dataset):
    out_dir, meta = dataset
    frame = _read(out_dir, "test_late_detail")
    ids = open_clip.get_tokenizer("ViT-B-32")(frame["title"].tolist(), context_length=synthetic.STUDENT_CONTEXT)
    # nothing was truncated: the last non-pad token of every caption is EOT and it sits before the 248 limit
    lengths = (ids != 0).sum(dim=1)
    assert int(lengths.max()) < synthetic.STUDENT_CONTEXT
    assert bool((ids[torch.arange(len(ids)), lengths - 1] == 49407).all())
    groups = frame["group"].to_numpy()
    assert sorted(np.bincount(groups).tolist()) == [4] * 6
    for group in np.unique(groups):
        members = ids[torch.from_numpy(groups == group)]
        assert bool((members[:, :77] == members[0, :77]).all()), f"group {group} differs in the first 77 tokens"
        assert len({tuple(row.tolist()) for row in members}) == len(members), f"group {group} has twins"
    # images of a group really differ, and only in their bottom half
    first_group = frame[frame["group"] == groups[0]]["filepath"]
    pixels = np.stack([np.asarray(Image.open(path), dtype=np.float32) for path in first_group])
    spread = pixels.std(axis=0).mean(axis=-1)
    assert spread[16:].mean() > 4 * spread[:16].mean()
    assert meta["late_detail"]["first_differing_token_position"] >= 77


def test_no_scene_is_in_two_splits(dataset):
    out_dir, _ = dataset
    titles = {split: _read(out_dir, split)["title"].tolist() for split in SPLITS}
    every_title = [title for split in SPLITS for title in titles[split]]
    assert len(set(every_title)) == len(every_title)


def test_caption_describes_what_is_drawn(dataset):
    """Read each block's colour back from the pixels and compare with the caption (nearest palette colour)."""
    out_dir, _ = dataset
    frame = _read(out_dir, "train")
    palette = np.array([rgb for rgb, _ in synthetic.PALETTE.values()], dtype=np.float32)
    for path, title in zip(frame["filepath"][:10], frame["title"][:10]):
        pixels = np.asarray(Image.open(path), dtype=np.float32)
        named = []
        for row in (slice(0, 16), slice(16, 32)):
            for column in range(4):
                mean_rgb = pixels[row, column * 8:(column + 1) * 8].reshape(-1, 3).mean(axis=0)
                named.append(synthetic.COLOUR_NAMES[int(np.argmin(((palette - mean_rgb) ** 2).sum(axis=1)))])
        sentences = title.split(". ")[1:]
        assert [sentence.split(" is ")[1].split(",")[0] for sentence in sentences] == named


def test_same_seed_same_data_other_seed_other_data(dataset, tmp_path):
    out_dir, meta = dataset
    again = synthetic.generate_dataset(tmp_path / "again", seed=3, **SIZES)
    other = synthetic.generate_dataset(tmp_path / "other", seed=4, **SIZES)
    for split in SPLITS:
        assert _split_digest(out_dir, split) == _split_digest(tmp_path / "again", split)
        assert _split_digest(out_dir, split) != _split_digest(tmp_path / "other", split)
    assert again["late_detail"] == meta["late_detail"]
    assert json.loads((tmp_path / "again" / "meta.json").read_text())["seed"] == 3


def test_held_out_splits_do_not_depend_on_training_size(dataset, tmp_path):
    out_dir, _ = dataset
    synthetic.generate_dataset(tmp_path / "bigger", seed=3, **{**SIZES, "n_train": 60})
    for split in ("test_ordinary", "test_late_detail", "val"):
        assert _split_digest(out_dir, split) == _split_digest(tmp_path / "bigger", split)
    assert _split_digest(out_dir, "train") != _split_digest(tmp_path / "bigger", "train")


def test_bad_sizes_are_refused_with_a_clear_message(tmp_path):
    with pytest.raises(ValueError, match="multiple of --group-size"):
        synthetic.generate_dataset(tmp_path, n_test=10, group_size=4)
    with pytest.raises(ValueError, match="image_size"):
        synthetic.render_scene(synthetic.Scene((0,) * 4, (0,) * 4), 30, np.random.default_rng(0))


def test_command_line(tmp_path, capsys):
    code = synthetic.main(["--out", str(tmp_path / "cli"), "--seed", "1", "--n-train", "8", "--n-val", "4",
                           "--n-test", "8", "--group-size", "4"])
    assert code == 0
    assert "differ at token" in capsys.readouterr().out
    meta = json.loads((tmp_path / "cli" / "meta.json").read_text())
    assert meta["splits"]["train"]["n"] == 8 and meta["group_size"] == 4
    assert synthetic.main(["--out", str(tmp_path / "bad"), "--n-test", "6", "--group-size", "4"]) == 2
