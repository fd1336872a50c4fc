"""A small synthetic long-caption dataset where the words after token 77 decide retrieval.

No pretrained CLIP and no real long-caption dataset can be fetched on a fresh machine, so the demo trains on a
world of its own. Every image is a 2 x 4 grid of solid colour blocks (32 x 32 pixels by default, so that a
patch-8 ViT sees each block as two patches). Its long caption opens with a one-sentence summary (the short
caption), then describes the blocks one sentence each in a fixed order: the top row left to right, then the
bottom row. The sentences are fixed-length templates over single-token colour words, so every caption tokenizes
to the same length and the top row is always described inside CLIP's 77 tokens while every bottom-row colour
word sits after token 77: a 77-token text tower cannot see the bottom row at all, a 248-token one sees all of it.

Splits written by ``generate_dataset`` (open_clip CSVs, tab-separated, columns ``filepath``, ``title`` (long
caption), ``short_title`` (short caption)):

- ``train.csv``, ``val.csv``, ``test_ordinary.csv``: independent random scenes;
- ``test_late_detail.csv``: groups of ``group_size`` scenes sharing the top row (so their captions agree in the
  first 77 tokens) and differing in the bottom row; column ``group`` names the group. A model that reads only
  77 tokens is at chance inside a group.

No scene occurs in two splits. ``meta.json`` records the seed, sizes and token-length statistics, and
the late-detail property as checked with open_clip's tokenizer.
"""
import argparse
import functools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Set, Tuple

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from training_ext.common.file_io import atomic_open, write_json, write_tsv

# name -> (RGB, warmth). Every name is a single token of CLIP's BPE vocabulary (checked at generation), which
# keeps all captions the same token length. The hues are far apart so that 8-pixel blocks stay tellable apart.
PALETTE: Dict[str, Tuple[Tuple[int, int, int], str]] = {
    "red": ((220, 30, 30), "warm"),
    "orange": ((245, 140, 20), "warm"),
    "yellow": ((240, 225, 40), "warm"),
    "green": ((40, 170, 60), "cool"),
    "blue": ((35, 70, 220), "cool"),
    "purple": ((140, 50, 180), "cool"),
    "white": ((245, 245, 245), "neutral"),
    "black": ((20, 20, 20), "neutral"),
}
COLOUR_NAMES: Tuple[str, ...] = tuple(PALETTE)
ROW_NAMES = ("top", "bottom")
COLUMN_ORDINALS = ("first", "second", "third", "fourth")
N_COLUMNS = len(COLUMN_ORDINALS)

# CLIP's context: the teacher sees BOS + 75 caption tokens + EOT; the students see 248 tokens.
TEACHER_CONTEXT = 77
STUDENT_CONTEXT = 248

SPLIT_FILES = {
    "train": "train.csv",
    "val": "val.csv",
    "test_ordinary": "test_ordinary.csv",
    "test_late_detail": "test_late_detail.csv",
}

# Per-block colour shift and per-pixel noise: no two images are pixel-identical, yet the palette stays apart.
BLOCK_JITTER = 12
PIXEL_NOISE_STD = 4.0


@dataclass(frozen=True)
class Scene:
    """One image's content: colour indices into COLOUR_NAMES, left to right, per row."""
    top: Tuple[int, ...]
    bottom: Tuple[int, ...]


def short_caption(scene: Scene) -> str:
    """The one-sentence summary; it names only top-row content so it stays inside the first 77 tokens."""
    corner = COLOUR_NAMES[scene.top[0]]
    return f"A picture of eight coloured blocks in two rows, with a {corner} block in the top left corner."


def _block_sentence(row_name: str, column: int, colour_index: int) -> str:
    name = COLOUR_NAMES[colour_index]
    warmth = PALETTE[name][1]
    return f"The {COLUMN_ORDINALS[column]} block in the {row_name} row is {name}, a {warmth} colour."


def long_caption(scene: Scene) -> str:
    """Summary, then every block in a fixed order: top row left to right, then bottom row left to right."""
    sentences = [short_caption(scene)]
    for row_name, row in zip(ROW_NAMES, (scene.top, scene.bottom)):
        sentences.extend(_block_sentence(row_name, column, colour) for column, colour in enumerate(row))
    return " ".join(sentences)


def render_scene(scene: Scene, image_size: int, rng: np.random.Generator) -> Image.Image:
    """Draw the 2 x 4 grid; rows split the height in two, columns split the width in four."""
    if image_size % 8:
        raise ValueError(f"image_size must be a multiple of 8 (2 rows x 4 columns of whole pixels), got {image_size}")
    block_h, block_w = image_size // 2, image_size // N_COLUMNS
    pixels = np.empty((image_size, image_size, 3), dtype=np.float32)
    for row_index, row in enumerate((scene.top, scene.bottom)):
        for column, colour_index in enumerate(row):
            rgb = np.array(PALETTE[COLOUR_NAMES[colour_index]][0], dtype=np.float32)
            rgb += rng.integers(-BLOCK_JITTER, BLOCK_JITTER + 1, size=3)
            pixels[row_index * block_h:(row_index + 1) * block_h, column * block_w:(column + 1) * block_w] = rgb
    pixels += rng.normal(0.0, PIXEL_NOISE_STD, size=pixels.shape)
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), mode="RGB")


def _random_row(rng: np.random.Generator) -> Tuple[int, ...]:
    return tuple(int(c) for c in rng.integers(0, len(COLOUR_NAMES), size=N_COLUMNS))


def sample_scenes(rng: np.random.Generator, count: int, excluded: Set[Scene]) -> List[Scene]:
    """``count`` distinct random scenes, none of them in ``excluded``."""
    capacity = len(COLOUR_NAMES) ** (2 * N_COLUMNS) - len(excluded)
    if count > capacity // 2:
        raise ValueError(f"asked for {count} distinct scenes; the world has room for far fewer ({capacity})")
    scenes: List[Scene] = []
    seen = set(excluded)
    while len(scenes) < count:
        scene = Scene(_random_row(rng), _random_row(rng))
        if scene not in seen:
            seen.add(scene)
            scenes.append(scene)
    return scenes


def sample_late_detail_groups(rng: np.random.Generator, n_groups: int, group_size: int) -> List[List[Scene]]:
    """Groups sharing one top row (distinct across groups) with distinct bottom rows inside a group."""
    n_rows = len(COLOUR_NAMES) ** N_COLUMNS
    if group_size < 2 or group_size > n_rows or n_groups > n_rows // 2:
        raise ValueError(f"cannot build {n_groups} groups of {group_size} from {n_rows} possible rows")
    groups: List[List[Scene]] = []
    used_tops: Set[Tuple[int, ...]] = set()
    while len(groups) < n_groups:
        top = _random_row(rng)
        if top in used_tops:
            continue
        used_tops.add(top)
        bottoms: List[Tuple[int, ...]] = []
        while len(bottoms) < group_size:
            bottom = _random_row(rng)
            if bottom not in bottoms:
                bottoms.append(bottom)
        groups.append([Scene(top, bottom) for bottom in bottoms])
    return groups


def write_split(out_dir: Path, split: str, scenes: Sequence[Scene], groups: Sequence[int], image_size: int,
                rng: np.random.Generator) -> pd.DataFrame:
    """Render ``scenes`` to ``images/<split>/``, write ``<split>.csv`` and return its rows."""
    image_dir = out_dir / "images" / split
    rows = []
    for index, scene in enumerate(tqdm(scenes, desc=f"{split} images", unit="img", leave=False)):
        image_path = image_dir / f"{index:06d}.png"
        with atomic_open(str(image_path), "wb") as handle:
            render_scene(scene, image_size, rng).save(handle, format="PNG")
        rows.append({"filepath": str(image_path), "title": long_caption(scene), "short_title": short_caption(scene)})
    frame = pd.DataFrame(rows, columns=["filepath", "title", "short_title"])
    if split == "test_late_detail":
        frame["group"] = list(groups)
    write_tsv(str(out_dir / SPLIT_FILES[split]), list(frame.columns), frame.itertuples(index=False, name=None))
    return frame


@functools.lru_cache(maxsize=1)
def _clip_tokenizer():
    """open_clip's BPE tokenizer (loading its merges takes a moment, so it is built once)."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def _token_ids(captions: Iterable[str]) -> List[List[int]]:
    """Untruncated ids as open_clip's tokenizer builds them: BOS, the caption's BPE tokens, EOT."""
    tokenizer = _clip_tokenizer()
    return [[tokenizer.sot_token_id] + tokenizer.encode(text) + [tokenizer.eot_token_id] for text in captions]


def token_length_stats(captions: Sequence[str]) -> Dict[str, float]:
    lengths = [len(ids) for ids in _token_ids(captions)]
    return {"min": min(lengths), "max": max(lengths), "mean": float(np.mean(lengths))}


def check_late_detail(captions: Sequence[str], groups: Sequence[int]) -> Dict[str, int]:
    """Verify with the real tokenizer that each group agrees on its first 77 tokens (BOS counted) and that its
    captions are pairwise different, and that all fit 248 tokens; return where the groups start to differ."""
    ids = _token_ids(captions)
    longest = max(len(seq) for seq in ids)
    if longest > STUDENT_CONTEXT:
        raise ValueError(f"a late-detail caption has {longest} tokens, more than the {STUDENT_CONTEXT} a student reads")
    members: Dict[int, List[List[int]]] = {}
    for seq, group in zip(ids, groups):
        members.setdefault(group, []).append(seq)
    first_difference = STUDENT_CONTEXT
    for group, sequences in members.items():
        heads = {tuple(seq[:TEACHER_CONTEXT]) for seq in sequences}
        if len(heads) != 1:
            raise ValueError(f"late-detail group {group}: captions differ within the first {TEACHER_CONTEXT} tokens")
        if len({tuple(seq) for seq in sequences}) != len(sequences):
            raise ValueError(f"late-detail group {group}: two captions are identical")
        for other in sequences[1:]:
            position = next((i for i, (a, b) in enumerate(zip(sequences[0], other)) if a != b),
                            min(len(sequences[0]), len(other)))
            first_difference = min(first_difference, position)
    return {"n_groups": len(members), "first_differing_token_position": first_difference,
            "max_tokens": longest}


def _check_palette_is_single_tokens() -> None:
    words = list(COLOUR_NAMES) + sorted({warmth for _, warmth in PALETTE.values()}) + list(COLUMN_ORDINALS)
    for word, ids in zip(words, _token_ids(words)):
        if len(ids) != 3:
            raise ValueError(f"'{word}' is not one CLIP token: captions would differ in length and the 77-token "
                             f"boundary would move")


def generate_dataset(out_dir, seed: int = 0, n_train: int = 8192, n_val: int = 256, n_test: int = 256,
                     group_size: int = 8, image_size: int = 32) -> dict:
    """Write all four splits and ``meta.json`` under ``out_dir``; the same arguments give the same files.

    Test splits are drawn first, then val, then train, each from its own random streams: the test splits do not
    depend on the train/val sizes, and no scene is in two splits.
    """
    if n_test % group_size:
        raise ValueError(f"--n-test ({n_test}) must be a multiple of --group-size ({group_size})")
    for name, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if value < 1:
            raise ValueError(f"{name} must be positive, got {value}")
    _check_palette_is_single_tokens()
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    # one scene stream and one pixel stream per split: a split's content depends only on the seed, its own size
    # and the splits drawn before it (tests, then val, then train), never on the size of a later one
    scene_streams, pixel_streams = np.random.SeedSequence(seed).spawn(2)
    scene_rng = dict(zip(SPLIT_FILES, (np.random.default_rng(s) for s in scene_streams.spawn(len(SPLIT_FILES)))))
    pixel_rng = dict(zip(SPLIT_FILES, (np.random.default_rng(s) for s in pixel_streams.spawn(len(SPLIT_FILES)))))

    late_groups = sample_late_detail_groups(scene_rng["test_late_detail"], n_test // group_size, group_size)
    late_scenes = [scene for group in late_groups for scene in group]
    late_group_ids = [g for g, group in enumerate(late_groups) for _ in group]
    ordinary_scenes = sample_scenes(scene_rng["test_ordinary"], n_test, excluded=set(late_scenes))
    test_scenes = set(late_scenes) | set(ordinary_scenes)
    val_scenes = sample_scenes(scene_rng["val"], n_val, excluded=test_scenes)
    train_scenes = sample_scenes(scene_rng["train"], n_train, excluded=test_scenes | set(val_scenes))

    plan = [
        ("test_late_detail", late_scenes, late_group_ids),
        ("test_ordinary", ordinary_scenes, []),
        ("val", val_scenes, []),
        ("train", train_scenes, []),
    ]
    splits = {}
    late_detail_check = None
    for split, scenes, groups in tqdm(plan, desc="splits", unit="split"):
        frame = write_split(out_dir, split, scenes, groups, image_size, pixel_rng[split])
        splits[split] = {"csv": str(out_dir / SPLIT_FILES[split]), "n": len(frame),
                         "tokens": token_length_stats(frame["title"].tolist()),
                         "short_tokens": token_length_stats(frame["short_title"].tolist())}
        if split == "test_late_detail":
            late_detail_check = check_late_detail(frame["title"].tolist(), groups)
    meta = {
        "generator": "training_ext.synthetic",
        "seed": seed,
        "image_size": image_size,
        "grid": {"rows": list(ROW_NAMES), "columns": N_COLUMNS},
        "colours": list(COLOUR_NAMES),
        "group_size": group_size,
        "teacher_context": TEACHER_CONTEXT,
        "student_context": STUDENT_CONTEXT,
        "csv_columns": {"image": "filepath", "long_caption": "title", "short_caption": "short_title"},
        "splits": splits,
        "late_detail": late_detail_check,
    }
    write_json(str(out_dir / "meta.json"), meta)
    return meta


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training_ext.synthetic",
        description="Write the synthetic long-caption dataset (2x4 colour-block grids with long captions whose "
                    "bottom-row details lie after token 77): train/val/test-ordinary/test-late-detail CSVs in "
                    "open_clip's format, PNG images and meta.json.")
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed and sizes give the same files")
    parser.add_argument("--n-train", type=int, default=8192, help="training images")
    parser.add_argument("--n-val", type=int, default=256, help="validation images")
    parser.add_argument("--n-test", type=int, default=256,
                        help="images in EACH test split (ordinary and late-detail); a multiple of --group-size")
    parser.add_argument("--group-size", type=int, default=8,
                        help="late-detail images per group (same top row, different bottom rows)")
    parser.add_argument("--image-size", type=int, default=32, help="image side in pixels, a multiple of 8")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        meta = generate_dataset(args.out, seed=args.seed, n_train=args.n_train, n_val=args.n_val,
                                n_test=args.n_test, group_size=args.group_size, image_size=args.image_size)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    late = meta["late_detail"]
    print(f"wrote {sum(s['n'] for s in meta['splits'].values())} images to {args.out}; captions are "
          f"{meta['splits']['train']['tokens']['max']} tokens; late-detail groups first differ at token "
          f"{late['first_differing_token_position']} (teacher reads {TEACHER_CONTEXT})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
