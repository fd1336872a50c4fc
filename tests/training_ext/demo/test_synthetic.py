"""The synthetic long-caption dataset: determinism, open_clip's CSV format, and the detail positions checked with
open_clip's own tokenizer (independently of the generator's token arithmetic and built-in check)."""
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import open_clip
import pandas as pd
import pytest
import torch
from PIL import Image

from training_ext.demo import colour_grids as synthetic
from training_ext.common.captions import first_sentence

SPLITS = ("train", "val", "test_ordinary", "test_detail")
LONG_SPLITS = ("test_detail_long", "train_long")
SIZES = dict(n_train=40, n_val=8, n_test=48, group_size=4, n_test_long=32, n_train_long=16)
EOT = 49407


def _read(out_dir, split):
    return pd.read_csv(out_dir / {**synthetic.SPLIT_FILES, **synthetic.LONG_SPLIT_FILES}[split], sep="\t")


def _split_digest(out_dir, split):
    """Hash of a split's captions and image pixels (paths differ between output folders)."""
    digest = hashlib.sha256()
    frame = _read(out_dir, split)
    for path, title in zip(frame["filepath"], frame["title"]):
        digest.update(title.encode())
        digest.update(np.asarray(Image.open(path)).tobytes())
    return digest.hexdigest()


def _ids(captions, context_length):
    return open_clip.get_tokenizer("ViT-B-32")(list(captions), context_length=context_length)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("synthetic")
    meta = synthetic.generate_dataset(out_dir, seed=3, **SIZES)
    return out_dir, meta


def test_csvs_have_open_clip_columns_and_sizes(dataset):
    out_dir, meta = dataset
    expected_sizes = {"train": 40, "val": 8, "test_ordinary": 48, "test_detail": 48}
    for split in SPLITS:
        frame = _read(out_dir, split)
        extra = ["group", "detail_block", "detail_position"] if split == "test_detail" else []
        assert list(frame.columns) == ["filepath", "title", "short_title"] + extra
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

    loader = CsvDataset(str(out_dir / "test_detail.csv"), to_array, img_key="filepath", caption_key="title",
                        sep="\t", tokenizer=open_clip.get_tokenizer("ViT-B-32"))
    image, tokens = loader[0]
    assert image.shape == (32, 32, 3) and tokens.shape == (77,)
    # the 77-token view of a long caption is truncated: it ends in EOT at the last position
    assert int(tokens[-1]) == EOT


def test_short_caption_is_the_first_sentence(dataset):
    out_dir, _ = dataset
    for split in SPLITS:
        frame = _read(out_dir, split)
        for title, short in zip(frame["title"], frame["short_title"]):
            assert first_sentence(title) == short
            assert len(title) > 3 * len(short)


def test_caption_lengths_vary_and_always_fit_248_tokens(dataset):
    out_dir, meta = dataset
    titles = pd.concat([_read(out_dir, split)["title"] for split in SPLITS]).tolist()
    ids = _ids(titles, synthetic.STUDENT_CONTEXT)
    lengths = (ids != 0).sum(dim=1)
    # nothing was truncated: the last token of every caption is EOT, before the 248 limit
    assert int(lengths.max()) < synthetic.STUDENT_CONTEXT
    assert bool((ids[torch.arange(len(ids)), lengths - 1] == EOT).all())
    assert int(lengths.min()) >= 134 and len(set(lengths.tolist())) >= 5
    assert meta["splits"]["train"]["tokens"]["max"] <= 244


def test_detail_position_is_the_one_token_a_group_differs_in(dataset):
    """Recount with open_clip's tokenizer: inside a group exactly one token differs, at the recorded position,
    and it is a colour word; the images differ only in the detail block."""
    out_dir, _ = dataset
    frame = _read(out_dir, "test_detail")
    ids = _ids(frame["title"], synthetic.STUDENT_CONTEXT)
    tokenizer = open_clip.tokenizer.SimpleTokenizer()
    colour_tokens = {tokenizer.encode(name)[0] for name in synthetic.COLOUR_NAMES}
    assert sorted(frame.groupby("group").size().tolist()) == [4] * 12
    for group, members in frame.groupby("group"):
        rows = ids[torch.tensor(members.index.tolist())]
        differing = torch.nonzero((rows != rows[0]).any(dim=0)).flatten().tolist()
        assert differing == [int(members["detail_position"].iloc[0])], f"group {group}"
        assert len(set(members["detail_position"])) == 1 and len(set(members["detail_block"])) == 1
        assert {int(t) for t in rows[:, differing[0]]} <= colour_tokens
        assert len({int(t) for t in rows[:, differing[0]]}) == len(members)
        block = int(members["detail_block"].iloc[0])
        pixels = np.stack([np.asarray(Image.open(p), dtype=np.float32) for p in members["filepath"]])
        spread = pixels.std(axis=0).mean(axis=-1)  # (32, 32): where the group's images differ
        row, column = divmod(block, synthetic.N_COLUMNS)
        inside = np.zeros_like(spread, dtype=bool)
        inside[row * 16:(row + 1) * 16, column * 8:(column + 1) * 8] = True
        assert spread[inside].mean() > 5 * spread[~inside].mean()


def test_a_77_token_model_sees_exactly_the_details_up_to_token_75(dataset):
    """What the table's two detail columns rest on: with open_clip's 77-token truncation, a group's captions
    tokenize identically when its detail lies past position 75 and differently otherwise."""
    out_dir, meta = dataset
    frame = _read(out_dir, "test_detail")
    ids = _ids(frame["title"], synthetic.TEACHER_CONTEXT)
    seen = {}
    for group, members in frame.groupby("group"):
        rows = ids[torch.tensor(members.index.tolist())]
        seen[int(members["detail_position"].iloc[0])] = len({tuple(r.tolist()) for r in rows}) > 1
    assert seen == {position: position <= synthetic.LAST_TEACHER_POSITION for position in seen}
    assert any(seen.values()) and not all(seen.values())  # the fixture's 12 groups fall on both sides
    assert meta["detail"]["groups_inside_teacher_context"] == sum(seen.values())


def test_detail_positions_sweep_the_whole_range_evenly():
    """Stratified targets: every 25-token stretch of the possible range holds about its share of the groups."""
    groups = synthetic.sample_detail_groups(np.random.default_rng(0), 80, 2, set())
    positions = np.array([synthetic.detail_position(group[0]) for group in groups])
    low, high = synthetic.detail_position_range()
    assert (low, high) == (43, 237)
    assert positions.min() <= low + 5 and positions.max() >= high - 5
    counts, _ = np.histogram(positions, bins=np.arange(low, high + 26, 25))
    expected = 80 * 25 / (high - low)
    assert counts[:-1].min() >= 0.6 * expected and counts.max() <= 1.4 * expected + 1


def test_caption_describes_what_is_drawn(dataset):
    """Read each block's colour back from the pixels and compare with the caption (nearest palette colour)."""
    out_dir, _ = dataset
    frame = _read(out_dir, "train")
    palette = np.array(list(synthetic.PALETTE.values()), dtype=np.float32)
    pattern = re.compile(r"The (\w+) block in the (top|bottom) row is (\w+), a solid colour\.")
    for path, title in zip(frame["filepath"][:10], frame["title"][:10]):
        pixels = np.asarray(Image.open(path), dtype=np.float32)
        named = []
        for row in (slice(0, 16), slice(16, 32)):
            for column in range(4):
                mean_rgb = pixels[row, column * 8:(column + 1) * 8].reshape(-1, 3).mean(axis=0)
                named.append(synthetic.COLOUR_NAMES[int(np.argmin(((palette - mean_rgb) ** 2).sum(axis=1)))])
        described = pattern.findall(title)
        assert [(c, r) for c, r, _ in described] == [(c, r) for r in ("top", "bottom") for c in synthetic.COLUMN_ORDINALS]
        assert [colour for _, _, colour in described] == named
        # what is left once the block sentences are taken out is the summary and fillers
        rest = [s for s in re.split(r"(?<=\.) ", pattern.sub("", title)) if s.strip()]
        assert rest[0] == first_sentence(title)
        assert all(s.strip() in synthetic.FILLER_SENTENCES for s in rest[1:])


def test_same_seed_same_data_other_seed_other_data(dataset, tmp_path):
    out_dir, meta = dataset
    again = synthetic.generate_dataset(tmp_path / "again", seed=3, **SIZES)
    other = synthetic.generate_dataset(tmp_path / "other", seed=4, **SIZES)
    for split in SPLITS:
        assert _split_digest(out_dir, split) == _split_digest(tmp_path / "again", split)
        assert _split_digest(out_dir, split) != _split_digest(tmp_path / "other", split)
    assert again["detail"] == meta["detail"]
    assert _read(out_dir, "test_detail")["detail_position"].tolist() == \
        _read(tmp_path / "again", "test_detail")["detail_position"].tolist()
    assert json.loads((tmp_path / "again" / "meta.json").read_text())["seed"] == 3


def test_held_out_splits_do_not_depend_on_training_size(dataset, tmp_path):
    out_dir, _ = dataset
    synthetic.generate_dataset(tmp_path / "bigger", seed=3, **{**SIZES, "n_train": 60})
    for split in ("test_ordinary", "test_detail", "val"):
        assert _split_digest(out_dir, split) == _split_digest(tmp_path / "bigger", split)
    assert _split_digest(out_dir, "train") != _split_digest(tmp_path / "bigger", "train")


def test_no_scene_is_in_two_splits(dataset):
    """A scene is the colour grid (the filler layout is caption-only), read back from the block sentences."""
    out_dir, _ = dataset
    pattern = re.compile(r"row is (\w+), a solid colour")
    grids = {split: [tuple(pattern.findall(t)) for t in _read(out_dir, split)["title"]]
             for split in SPLITS + LONG_SPLITS}
    for split in grids:
        assert len(set(grids[split])) == len(grids[split])
        for other in grids:
            if other != split:
                assert not set(grids[split]) & set(grids[other]), (split, other)


def test_bad_sizes_are_refused_with_a_clear_message(tmp_path):
    with pytest.raises(ValueError, match="multiple of --group-size"):
        synthetic.generate_dataset(tmp_path, n_test=10, group_size=4)
    with pytest.raises(ValueError, match="group_size"):
        synthetic.generate_dataset(tmp_path, n_test=18, group_size=9)
    with pytest.raises(ValueError, match="image_size"):
        synthetic.render_scene(synthetic.Scene((0,) * 4, (0,) * 4), 30, np.random.default_rng(0))


def test_command_line(tmp_path, capsys):
    code = synthetic.main(["--out", str(tmp_path / "cli"), "--seed", "1", "--n-train", "8", "--n-val", "4",
                           "--n-test", "8", "--group-size", "4", "--n-test-long", "8"])
    assert code == 0
    assert "differ at one token" in capsys.readouterr().out
    meta = json.loads((tmp_path / "cli" / "meta.json").read_text())
    assert meta["splits"]["train"]["n"] == 8 and meta["group_size"] == 4
    assert synthetic.main(["--out", str(tmp_path / "bad"), "--n-test", "6", "--group-size", "4"]) == 2


def _file_hashes(folder):
    return {path.relative_to(folder): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def test_long_splits_leave_every_other_file_byte_identical(tmp_path):
    """The long splits are drawn after everything else from their own streams: generating them into the same
    folder rewrites the other CSVs and images with the same bytes (meta.json only gains entries)."""
    sizes = dict(seed=5, n_train=8, n_val=4, n_test=8, group_size=4)
    synthetic.generate_dataset(tmp_path, n_test_long=0, **sizes)
    before = _file_hashes(tmp_path)
    assert not any(str(path).startswith(("test_detail_long", "train_long", "images/test_detail_long"))
                   for path in before)
    synthetic.generate_dataset(tmp_path, n_test_long=8, n_train_long=4, **sizes)
    after = _file_hashes(tmp_path)
    meta = Path("meta.json")
    assert {k: v for k, v in after.items() if k in before and k != meta} == \
        {k: v for k, v in before.items() if k != meta}
    assert after[meta] != before[meta]
    assert {Path("test_detail_long.csv"), Path("train_long.csv")} <= set(after)


def test_long_detail_sits_at_tokens_250_to_500_by_clips_tokenizer(dataset):
    """Recount with open_clip's tokenizer at 512: every long caption fits whole, each group differs at exactly one
    token, its recorded position, between 250 and 500; at 248 tokens a group's captions are the same ids."""
    out_dir, meta = dataset
    frame = _read(out_dir, "test_detail_long")
    ids = _ids(frame["title"], synthetic.LONG_CONTEXT)
    lengths = (ids != 0).sum(dim=1)
    assert bool((ids[torch.arange(len(ids)), lengths - 1] == EOT).all()) and int(lengths.max()) <= 504
    cut = _ids(frame["title"], synthetic.STUDENT_CONTEXT)
    positions = []
    for group, members in frame.groupby("group"):
        rows = ids[torch.tensor(members.index.tolist())]
        differing = torch.nonzero((rows != rows[0]).any(dim=0)).flatten().tolist()
        assert differing == [int(members["detail_position"].iloc[0])], f"group {group}"
        assert len({tuple(r.tolist()) for r in cut[torch.tensor(members.index.tolist())]}) == 1
        positions.append(differing[0])
    assert 250 <= min(positions) and max(positions) <= 500
    # stratified over 250-497: the 8 groups spread over the range, not piled at one end
    assert min(positions) < 290 and max(positions) > 450
    assert meta["detail_long"]["min_position"] == min(positions)
    train_lengths = (_ids(_read(out_dir, "train_long")["title"], synthetic.LONG_CONTEXT) != 0).sum(dim=1)
    assert int(train_lengths.max()) > synthetic.STUDENT_CONTEXT and int(train_lengths.max()) <= 504
