"""A small synthetic long-caption dataset where retrieval depends on a detail at a known token position.

No pretrained CLIP and no real long-caption dataset can be fetched on a fresh machine, so the demo trains on a
world of its own. Every image is a 2 x 4 grid of solid colour blocks (32 x 32 pixels by default, so that a
patch-8 ViT sees each block as two patches). Its long caption opens with a one-sentence summary (the short
caption), then describes the eight blocks one sentence each in a fixed order (top row left to right, then the
bottom row), with 0 to ``MAX_FILLERS`` *filler* sentences (true of every picture, so they carry no information)
slipped in between at random places. All sentences are fixed-length templates over single-token words, so a
block's token position is known exactly: it moves with the number of fillers before it. Captions run from 134 to
244 tokens; a colour word can sit anywhere from token 29 to token 237.

Splits written by ``generate_dataset`` (open_clip CSVs, tab-separated, columns ``filepath``, ``title`` (long
caption), ``short_title`` (short caption)):

- ``train.csv``, ``val.csv``, ``test_ordinary.csv``: independent random scenes and filler layouts;
- ``test_detail.csv``: groups of ``group_size`` scenes that are identical (filler layout included) except for
  the colour of one block, the *detail*. Columns ``group``, ``detail_block`` and ``detail_position`` (the index
  of the detail's colour word in open_clip's untruncated token ids, start token = 0) are added. The groups'
  detail positions sweep evenly over the whole range. A 77-token model keeps the start token, 75 caption tokens
  and the end token, so it sees a detail at position <= ``LAST_TEACHER_POSITION`` (75) and is at chance inside
  a group whose detail lies later;
- ``test_detail_long.csv`` (``n_test_long``, default ``LONG_GROUPS`` groups: 256 at group size 8): the same kind of groups with up to
  ``LONG_MAX_FILLERS`` fillers (captions up to 504 tokens) and the detail swept over tokens
  ``LONG_DETAIL_RANGE`` (250-497): past everything a 248-token student reads, inside 512;
- ``train_long.csv`` (``n_train_long``, default 0 = not written): random scenes with 0 to ``LONG_MAX_FILLERS``
  fillers (134-504 tokens), to fine-tune at 512.

The two long splits come from random streams of their own, drawn after every other split, so the other files are
the same bytes whether or not they are written.

No scene occurs in two splits (a scene is the grid of colours; the filler layout is caption-only). ``meta.json``
records the seed, sizes, token-length statistics and the detail positions as re-checked with open_clip's
tokenizer.
"""
import argparse
import functools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from training_ext.common.file_io import atomic_open, write_json, write_tsv

# name -> RGB. Every name is a single token of CLIP's BPE vocabulary (checked at generation), so a colour change
# never moves a later token. The hues are far apart so that 8-pixel blocks stay tellable apart.
PALETTE: Dict[str, Tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (240, 225, 40),
    "green": (40, 170, 60),
    "blue": (35, 70, 220),
    "purple": (140, 50, 180),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
COLOUR_NAMES: Tuple[str, ...] = tuple(PALETTE)
ROW_NAMES = ("top", "bottom")
COLUMN_ORDINALS = ("first", "second", "third", "fourth")
N_COLUMNS = len(COLUMN_ORDINALS)
N_BLOCKS = len(ROW_NAMES) * N_COLUMNS

# True of every picture, so a caption gains length but no information. All have the same token count (checked at
# generation), which keeps the detail positions on a regular grid that the sweep can cover evenly.
FILLER_SENTENCES: Tuple[str, ...] = (
    "Nothing in the picture moves or casts a shadow.",
    "All eight blocks have the same width and height.",
    "The colours were chosen at random for this picture.",
    "There is no border or frame around the grid.",
    "The picture is small and has a square shape.",
    "The light in the picture is even and soft.",
    "No two rows of the grid are drawn differently.",
    "The corners of every block are square and sharp.",
)
# 11 fillers of 10 tokens on top of the 134-token plain caption give 244 tokens: the longest caption still fits a
# 248-token student whole.
MAX_FILLERS = 11
# Filler slots: before block sentence j (j = 0..7, slot 0 right after the summary) or at the end (slot 8).
N_SLOTS = N_BLOCKS + 1

# CLIP's context: the teacher keeps the start token, 75 caption tokens and the end token; the students read 248.
TEACHER_CONTEXT = 77
LAST_TEACHER_POSITION = TEACHER_CONTEXT - 2
STUDENT_CONTEXT = 248
# The long splits: 37 fillers give 504 tokens, the longest caption that fits a 512-token model whole; their details
# sit past the students' 248 tokens.
LONG_CONTEXT = 512
LONG_MAX_FILLERS = 37
LONG_DETAIL_RANGE = (250, 500)
LONG_GROUPS = 32  # test_detail_long's default size in groups: 8 groups per 50-token stretch of the range
# The summary names the top-left block's colour, so a change there would also show at token ~19: the detail is
# any other block.
DETAIL_BLOCKS = tuple(range(1, N_BLOCKS))

SPLIT_FILES = {
    "train": "train.csv",
    "val": "val.csv",
    "test_ordinary": "test_ordinary.csv",
    "test_detail": "test_detail.csv",
}
LONG_SPLIT_FILES = {"test_detail_long": "test_detail_long.csv", "train_long": "train_long.csv"}
DETAIL_SPLITS = ("test_detail", "test_detail_long")
BASE_COLUMNS = ["filepath", "title", "short_title"]
DETAIL_COLUMNS = ["group", "detail_block", "detail_position"]

# Per-block colour shift and per-pixel noise: no two images are pixel-identical, yet the palette stays apart.
BLOCK_JITTER = 12
PIXEL_NOISE_STD = 4.0


@dataclass(frozen=True)
class Scene:
    """One image's content: colour indices into COLOUR_NAMES, left to right, per row."""
    top: Tuple[int, ...]
    bottom: Tuple[int, ...]

    @property
    def blocks(self) -> Tuple[int, ...]:
        return self.top + self.bottom

    def with_block(self, block: int, colour: int) -> "Scene":
        blocks = list(self.blocks)
        blocks[block] = colour
        return Scene(tuple(blocks[:N_COLUMNS]), tuple(blocks[N_COLUMNS:]))


@dataclass(frozen=True)
class Layout:
    """Where the filler sentences go: ``slots[j]`` lists the FILLER_SENTENCES indices written into slot j."""
    slots: Tuple[Tuple[int, ...], ...] = ((),) * N_SLOTS

    def fillers_before(self, block: int) -> int:
        return sum(len(slot) for slot in self.slots[:block + 1])

    @property
    def n_fillers(self) -> int:
        return sum(len(slot) for slot in self.slots)


@dataclass(frozen=True)
class Item:
    scene: Scene
    layout: Layout
    group: Optional[int] = None
    detail_block: Optional[int] = None


def short_caption(scene: Scene) -> str:
    """The one-sentence summary; it names only the top-left block, the same in every caption's first tokens."""
    corner = COLOUR_NAMES[scene.top[0]]
    return f"A picture of eight coloured blocks in two rows, with a {corner} block in the top left corner."


def _block_sentence(block: int, colour_index: int) -> str:
    # the words after the colour are the same for every colour, so that a detail changes exactly one token
    row_name, column = ROW_NAMES[block // N_COLUMNS], block % N_COLUMNS
    return f"The {COLUMN_ORDINALS[column]} block in the {row_name} row is {COLOUR_NAMES[colour_index]}, a solid colour."


def long_caption(scene: Scene, layout: Layout = Layout()) -> str:
    """Summary, then every block (top row left to right, then bottom row) with the layout's fillers in between."""
    sentences = [short_caption(scene)]
    for block, colour in enumerate(scene.blocks):
        sentences.extend(FILLER_SENTENCES[f] for f in layout.slots[block])
        sentences.append(_block_sentence(block, colour))
    sentences.extend(FILLER_SENTENCES[f] for f in layout.slots[N_BLOCKS])
    return " ".join(sentences)


def render_scene(scene: Scene, image_size: int, rng: np.random.Generator) -> Image.Image:
    """Draw the 2 x 4 grid; rows split the height in two, columns split the width in four."""
    if image_size % 8:
        raise ValueError(f"image_size must be a multiple of 8 (2 rows x 4 columns of whole pixels), got {image_size}")
    block_h, block_w = image_size // 2, image_size // N_COLUMNS
    pixels = np.empty((image_size, image_size, 3), dtype=np.float32)
    for row_index, row in enumerate((scene.top, scene.bottom)):
        for column, colour_index in enumerate(row):
            rgb = np.array(PALETTE[COLOUR_NAMES[colour_index]], dtype=np.float32)
            rgb += rng.integers(-BLOCK_JITTER, BLOCK_JITTER + 1, size=3)
            pixels[row_index * block_h:(row_index + 1) * block_h, column * block_w:(column + 1) * block_w] = rgb
    pixels += rng.normal(0.0, PIXEL_NOISE_STD, size=pixels.shape)
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), mode="RGB")


# ------------------------------------------------------------------------------------------ token arithmetic

@functools.lru_cache(maxsize=1)
def demo_tokenizer():
    """open_clip's SimpleTokenizer (CLIP's BPE), the tokenizer of every demo model (tiny-clip and its variants);
    built once: loading its merges takes a moment."""
    from open_clip import SimpleTokenizer  # deferred: torch and open_clip
    return SimpleTokenizer()


def _token_ids(captions: Iterable[str]) -> List[List[int]]:
    """Untruncated ids as the demo models' tokenizer builds them: start token, the caption's BPE tokens, end token."""
    from open_clip_ext.tokens import caption_ids  # deferred, as above

    return caption_ids(demo_tokenizer(), list(captions))


def _n_tokens(text: str) -> int:
    """BPE tokens of a caption fragment, without the start and end tokens."""
    return len(demo_tokenizer().encode(text))


@dataclass(frozen=True)
class TokenGrid:
    """Token counts of the caption's parts. CLIP's BPE never merges across words, so a caption's token count is
    the sum of its sentences' counts and a block's position follows from what precedes it."""
    summary: int
    block: int
    filler: int
    colour_offset: int  # tokens of a block sentence before its colour word

    def detail_position(self, block: int, fillers_before: int) -> int:
        return 1 + self.summary + fillers_before * self.filler + block * self.block + self.colour_offset

    def caption_length(self, n_fillers: int) -> int:
        return 2 + self.summary + N_BLOCKS * self.block + n_fillers * self.filler


@functools.lru_cache(maxsize=1)
def token_grid() -> TokenGrid:
    """Measure the parts with open_clip's tokenizer and refuse vocabularies that would break the fixed grid."""
    words = list(COLOUR_NAMES) + list(COLUMN_ORDINALS)
    for word, ids in zip(words, _token_ids(words)):
        if len(ids) != 3:
            raise ValueError(f"'{word}' is not one CLIP token: captions would differ in length and the detail "
                             f"positions would move")
    filler_lengths = {_n_tokens(text) for text in FILLER_SENTENCES}
    if len(filler_lengths) != 1:
        raise ValueError(f"filler sentences must all have one token count, found {sorted(filler_lengths)}")
    sentence = _block_sentence(0, 0)
    grid = TokenGrid(summary=_n_tokens(short_caption(Scene((0,) * N_COLUMNS, (0,) * N_COLUMNS))),
                     block=_n_tokens(sentence), filler=filler_lengths.pop(),
                     colour_offset=_n_tokens(sentence.split(f" {COLOUR_NAMES[0]},")[0]))
    if grid.caption_length(MAX_FILLERS) > STUDENT_CONTEXT:
        raise ValueError(f"the longest caption ({grid.caption_length(MAX_FILLERS)} tokens) would not fit "
                         f"{STUDENT_CONTEXT}")
    return grid


def detail_position_range(max_fillers: int = MAX_FILLERS) -> Tuple[int, int]:
    """The first and last token position a detail can take (over DETAIL_BLOCKS and 0..max_fillers fillers)."""
    grid = token_grid()
    return (grid.detail_position(DETAIL_BLOCKS[0], 0), grid.detail_position(DETAIL_BLOCKS[-1], max_fillers))


# ------------------------------------------------------------------------------------------ sampling

def _random_row(rng: np.random.Generator) -> Tuple[int, ...]:
    return tuple(int(c) for c in rng.integers(0, len(COLOUR_NAMES), size=N_COLUMNS))


def _random_scene(rng: np.random.Generator) -> Scene:
    return Scene(_random_row(rng), _random_row(rng))


def _layout_from_slots(slot_of_filler: Sequence[int], rng: np.random.Generator) -> Layout:
    slots: List[List[int]] = [[] for _ in range(N_SLOTS)]
    for slot in sorted(int(s) for s in slot_of_filler):
        slots[slot].append(int(rng.integers(0, len(FILLER_SENTENCES))))
    return Layout(tuple(tuple(slot) for slot in slots))


def random_layout(rng: np.random.Generator, max_fillers: int = MAX_FILLERS) -> Layout:
    """0..max_fillers fillers (uniform count), each in a uniformly drawn slot."""
    n_fillers = int(rng.integers(0, max_fillers + 1))
    return _layout_from_slots(rng.integers(0, N_SLOTS, size=n_fillers), rng)


def layout_for_detail(rng: np.random.Generator, block: int, fillers_before: int,
                      max_fillers: int = MAX_FILLERS) -> Layout:
    """A random layout with exactly ``fillers_before`` fillers up to ``block``'s sentence and 0 or more after it,
    ``max_fillers`` at most."""
    after = int(rng.integers(0, max_fillers - fillers_before + 1))
    slot_of_filler = list(rng.integers(0, block + 1, size=fillers_before))
    slot_of_filler += list(rng.integers(block + 1, N_SLOTS, size=after))
    return _layout_from_slots(slot_of_filler, rng)


def sample_items(rng: np.random.Generator, count: int, excluded: Set[Scene],
                 max_fillers: int = MAX_FILLERS) -> List[Item]:
    """``count`` items with distinct random scenes, none of them in ``excluded``, each with a random layout of
    up to ``max_fillers`` fillers."""
    capacity = len(COLOUR_NAMES) ** N_BLOCKS - len(excluded)
    if count > capacity // 2:
        raise ValueError(f"asked for {count} distinct scenes; the world has room for far fewer ({capacity})")
    items: List[Item] = []
    seen = set(excluded)
    while len(items) < count:
        scene = _random_scene(rng)
        if scene not in seen:
            seen.add(scene)
            items.append(Item(scene, random_layout(rng, max_fillers)))
    return items


def _detail_choice(rng: np.random.Generator, target: float, max_fillers: int) -> Tuple[int, int]:
    """(block, fillers before it, at most ``max_fillers``) whose detail position is nearest ``target``; ties drawn
    at random."""
    grid = token_grid()
    options = [(abs(grid.detail_position(b, n) - target), b, n)
               for b in DETAIL_BLOCKS for n in range(max_fillers + 1)]
    best = min(distance for distance, _, _ in options)
    nearest = [(b, n) for distance, b, n in options if distance == best]
    return nearest[int(rng.integers(0, len(nearest)))]


def sample_detail_groups(rng: np.random.Generator, n_groups: int, group_size: int, excluded: Set[Scene],
                         max_fillers: int = MAX_FILLERS,
                         position_range: Optional[Tuple[int, int]] = None) -> List[List[Item]]:
    """Groups of scenes that differ only in one block's colour, with one layout (up to ``max_fillers`` fillers)
    per group.

    Group g aims its detail at a position drawn uniformly from the g-th of ``n_groups`` equal slices of
    ``position_range`` (default: the whole possible range; clipped to it), stratified, so the positions cover the
    range evenly even for a handful of groups.
    """
    if not 2 <= group_size <= len(COLOUR_NAMES):
        raise ValueError(f"group_size must be between 2 and {len(COLOUR_NAMES)} (one colour per member), "
                         f"got {group_size}")
    possible = detail_position_range(max_fillers)
    low, high = position_range or possible
    # the nearest reachable position to a target past the range would pile up at its end: aim inside it
    low, high = max(low, possible[0]), min(high, possible[1])
    groups: List[List[Item]] = []
    seen = set(excluded)
    while len(groups) < n_groups:
        g = len(groups)
        target = low + (g + rng.random()) / n_groups * (high - low)
        block, before = _detail_choice(rng, target, max_fillers)
        base = _random_scene(rng)
        colours = rng.permutation(len(COLOUR_NAMES))[:group_size]
        scenes = [base.with_block(block, int(c)) for c in colours]
        if any(scene in seen for scene in scenes):  # an earlier split or group holds one: draw the group again
            continue
        seen.update(scenes)
        layout = layout_for_detail(rng, block, before, max_fillers)
        groups.append([Item(scene, layout, g, block) for scene in scenes])
    return groups


# ------------------------------------------------------------------------------------------ writing and checks

def detail_position(item: Item) -> int:
    return token_grid().detail_position(item.detail_block, item.layout.fillers_before(item.detail_block))


def write_split(out_dir: Path, split: str, items: Sequence[Item], image_size: int,
                rng: np.random.Generator) -> pd.DataFrame:
    """Render ``items`` to ``images/<split>/``, write ``<split>.csv`` and return its rows."""
    image_dir = out_dir / "images" / split
    rows = []
    for index, item in enumerate(tqdm(items, desc=f"{split} images", unit="img", leave=False)):
        image_path = image_dir / f"{index:06d}.png"
        with atomic_open(str(image_path), "wb") as handle:
            render_scene(item.scene, image_size, rng).save(handle, format="PNG")
        row = {"filepath": str(image_path), "title": long_caption(item.scene, item.layout),
               "short_title": short_caption(item.scene)}
        if item.detail_block is not None:
            row.update(group=item.group, detail_block=item.detail_block, detail_position=detail_position(item))
        rows.append(row)
    columns = BASE_COLUMNS + (DETAIL_COLUMNS if split in DETAIL_SPLITS else [])
    frame = pd.DataFrame(rows, columns=columns)
    write_tsv(str(out_dir / {**SPLIT_FILES, **LONG_SPLIT_FILES}[split]), columns,
              frame.itertuples(index=False, name=None))
    return frame


def token_length_stats(captions: Sequence[str]) -> Dict[str, float]:
    lengths = [len(ids) for ids in _token_ids(captions)]
    return {"min": min(lengths), "max": max(lengths), "mean": round(float(np.mean(lengths)), 2)}


def check_detail_groups(captions: Sequence[str], groups: Sequence[int], positions: Sequence[int],
                        context: int = STUDENT_CONTEXT) -> Dict:
    """Re-tokenize with the real tokenizer: each group's captions differ at exactly one token, the recorded
    ``detail_position``, and every caption fits ``context`` tokens (the students'). Returns the sweep's
    statistics."""
    ids = _token_ids(captions)
    longest = max(len(seq) for seq in ids)
    if longest > context:
        raise ValueError(f"a detail caption has {longest} tokens, more than the {context} a model reads")
    members: Dict[int, List[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    group_positions = []
    for group, indices in members.items():
        sequences = [ids[i] for i in indices]
        if len({len(seq) for seq in sequences}) != 1:
            raise ValueError(f"detail group {group}: captions differ in length")
        differing = [p for p in range(len(sequences[0])) if len({seq[p] for seq in sequences}) > 1]
        recorded = {positions[i] for i in indices}
        if differing != sorted(recorded) or len(recorded) != 1:
            raise ValueError(f"detail group {group}: captions differ at tokens {differing}, recorded {sorted(recorded)}")
        if len({tuple(seq) for seq in sequences}) != len(sequences):
            raise ValueError(f"detail group {group}: two captions are identical")
        group_positions.append(differing[0])
    late = sum(p > LAST_TEACHER_POSITION for p in group_positions)
    return {"n_groups": len(members), "min_position": min(group_positions), "max_position": max(group_positions),
            "groups_past_teacher_context": late, "groups_inside_teacher_context": len(group_positions) - late,
            "max_tokens": longest}


def generate_dataset(out_dir, seed: int = 0, n_train: int = 8192, n_val: int = 256, n_test: int = 512,
                     group_size: int = 8, image_size: int = 32, n_test_long: Optional[int] = None,
                     n_train_long: int = 0) -> dict:
    """Write the four splits, the long ones (``n_test_long`` / ``n_train_long`` > 0) and ``meta.json`` under
    ``out_dir``; the same arguments give the same files.

    Test splits are drawn first, then val, then train, then the long test and train splits, each from its own
    random streams: the test splits do not depend on the train/val sizes, the first four splits do not depend on
    the long ones, and no scene is in two splits. ``n_test_long`` None: LONG_GROUPS groups. Raises ValueError for
    sizes that cannot be met.
    """
    n_test_long = LONG_GROUPS * group_size if n_test_long is None else n_test_long
    for name, value in (("n_test", n_test), ("n_test_long", n_test_long)):
        if value % group_size:
            raise ValueError(f"--{name.replace('_', '-')} ({value}) must be a multiple of --group-size ({group_size})")
    for name, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if value < 1:
            raise ValueError(f"{name} must be positive, got {value}")
    for name, value in (("n_test_long", n_test_long), ("n_train_long", n_train_long)):
        if value < 0:
            raise ValueError(f"{name} must be 0 (not written) or positive, got {value}")
    grid = token_grid()
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    # one item stream and one pixel stream per split: a split's content depends only on the seed, its own size
    # and the splits drawn before it (tests, then val, then train), never on the size of a later one
    item_streams, pixel_streams = np.random.SeedSequence(seed).spawn(2)
    item_rng = dict(zip(SPLIT_FILES, (np.random.default_rng(s) for s in item_streams.spawn(len(SPLIT_FILES)))))
    pixel_rng = dict(zip(SPLIT_FILES, (np.random.default_rng(s) for s in pixel_streams.spawn(len(SPLIT_FILES)))))

    detail_groups = sample_detail_groups(item_rng["test_detail"], n_test // group_size, group_size, set())
    detail_items = [item for group in detail_groups for item in group]
    ordinary = sample_items(item_rng["test_ordinary"], n_test, excluded={i.scene for i in detail_items})
    test_scenes = {i.scene for i in detail_items + ordinary}
    val = sample_items(item_rng["val"], n_val, excluded=test_scenes)
    train = sample_items(item_rng["train"], n_train, excluded=test_scenes | {i.scene for i in val})
    # the long splits: a third stream of the seed (spawned children depend only on their index, so the first two
    # streams, and the files above, are the same as without it), scenes unused by every split above
    long_items, long_pixels = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)[2].spawn(2))
    used = test_scenes | {i.scene for i in val + train}
    long_detail = [item for group in sample_detail_groups(long_items, n_test_long // group_size, group_size, used,
                                                          LONG_MAX_FILLERS, LONG_DETAIL_RANGE) for item in group]
    long_train = sample_items(long_items, n_train_long, used | {i.scene for i in long_detail}, LONG_MAX_FILLERS)

    splits = {}
    detail_check = {}
    for split, items, pixels in tqdm([("test_detail", detail_items, pixel_rng["test_detail"]),
                                      ("test_ordinary", ordinary, pixel_rng["test_ordinary"]),
                                      ("val", val, pixel_rng["val"]), ("train", train, pixel_rng["train"]),
                                      ("test_detail_long", long_detail, long_pixels),
                                      ("train_long", long_train, long_pixels)], desc="splits", unit="split"):
        if not items:
            continue
        frame = write_split(out_dir, split, items, image_size, pixels)
        splits[split] = {"csv": str(out_dir / {**SPLIT_FILES, **LONG_SPLIT_FILES}[split]), "n": len(frame),
                         "tokens": token_length_stats(frame["title"].tolist()),
                         "short_tokens": token_length_stats(frame["short_title"].tolist())}
        if split in DETAIL_SPLITS:
            detail_check[split] = check_detail_groups(
                frame["title"].tolist(), frame["group"].tolist(), frame["detail_position"].tolist(),
                LONG_CONTEXT if split == "test_detail_long" else STUDENT_CONTEXT)
    meta = {
        "generator": "training_ext.synthetic",
        "seed": seed,
        "image_size": image_size,
        "grid": {"rows": list(ROW_NAMES), "columns": N_COLUMNS},
        "colours": list(COLOUR_NAMES),
        "group_size": group_size,
        "max_fillers": MAX_FILLERS,
        "token_grid": grid.__dict__,
        "teacher_context": TEACHER_CONTEXT,
        "last_position_a_77_token_model_sees": LAST_TEACHER_POSITION,
        "student_context": STUDENT_CONTEXT,
        "csv_columns": {"image": "filepath", "long_caption": "title", "short_caption": "short_title",
                        "detail": DETAIL_COLUMNS},
        "splits": splits,
        "detail": detail_check["test_detail"],
        "long_context": LONG_CONTEXT,
        "long_max_fillers": LONG_MAX_FILLERS,
        "detail_long": detail_check.get("test_detail_long"),
    }
    write_json(str(out_dir / "meta.json"), meta)
    return meta


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training_ext.synthetic",
        description="Write the synthetic long-caption dataset (2x4 colour-block grids; 134-244 token captions; "
                    "a detail split whose distinguishing colour word sits anywhere from token 29 to 237): "
                    "train/val/test-ordinary/test-detail CSVs in open_clip's format, PNG images and meta.json.")
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed and sizes give the same files")
    parser.add_argument("--n-train", type=int, default=8192, help="training images")
    parser.add_argument("--n-val", type=int, default=256, help="validation images")
    parser.add_argument("--n-test", type=int, default=512,
                        help="images in EACH test split (ordinary and detail); a multiple of --group-size")
    parser.add_argument("--group-size", type=int, default=8,
                        help="detail images per group (same scene and layout, one block's colour differs)")
    parser.add_argument("--image-size", type=int, default=32, help="image side in pixels, a multiple of 8")
    parser.add_argument("--n-test-long", type=int, default=None,
                        help=f"images in test_detail_long.csv (captions up to 504 tokens, the detail at tokens "
                             f"250-497); a multiple of --group-size, 0: not written (default: {LONG_GROUPS} groups, "
                             f"{LONG_GROUPS * 8} images at --group-size 8)")
    parser.add_argument("--n-train-long", type=int, default=0,
                        help="training images in train_long.csv (captions of 134-504 tokens, for a 512-token "
                             "fine-tune); 0 (default): not written")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        meta = generate_dataset(args.out, seed=args.seed, n_train=args.n_train, n_val=args.n_val,
                                n_test=args.n_test, group_size=args.group_size, image_size=args.image_size,
                                n_test_long=args.n_test_long, n_train_long=args.n_train_long)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    detail, tokens = meta["detail"], meta["splits"]["train"]["tokens"]
    print(f"wrote {sum(s['n'] for s in meta['splits'].values())} images to {args.out}; captions are "
          f"{tokens['min']}-{tokens['max']} tokens; detail groups differ at one token, positions "
          f"{detail['min_position']}-{detail['max_position']} ({detail['groups_past_teacher_context']} of "
          f"{detail['n_groups']} groups past token {LAST_TEACHER_POSITION}, the last a {TEACHER_CONTEXT}-token "
          f"model reads)")
    long = meta["detail_long"]
    if long:
        print(f"test_detail_long.csv: {long['n_groups']} groups, detail at tokens {long['min_position']}-"
              f"{long['max_position']}, captions up to {long['max_tokens']} tokens (read them at {LONG_CONTEXT})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
