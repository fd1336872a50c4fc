"""Readers for the evaluation benchmarks, each from its original on-disk layout (protocols: docs/benchmarks.md).

A retrieval reader returns a RetrievalSet: image paths, captions, and for each caption the index of
its image. A classification reader returns a ClassificationSet. Every path comes from the caller;
a missing or malformed file is reported with its path (and row or key) in a BenchmarkError, and so
are files that do not pair up as the release defines them (an image without its caption file, or the
reverse). Files that the reference protocol itself skips are named in RetrievalSet.skipped instead, and what a
reading found that the protocol card must state (which caption text, how many files a folder listing gave) goes
in RetrievalSet.notes.

A blank or whitespace-only caption follows the reference protocol: where the peer's code passes it to
the tokenizer as it is, it is kept (and counted in the protocol card); otherwise the reader stops.
"""
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from training_ext.common.captions import clean_caption
from training_ext.common.csv_table import DEFAULT_SEPARATOR, image_base, read_csv_table, resolve_image_path
from training_ext.common.text_files import TextDecodeError, read_json, read_text


class BenchmarkError(ValueError):
    """A benchmark file is missing or does not have the expected layout."""


@dataclass
class RetrievalSet:
    image_paths: List[str]
    captions: List[str]
    caption_image: List[int]  # caption_image[c] = index into image_paths of the image caption c describes
    skipped: List[str] = field(default_factory=list)  # files the reference protocol leaves out, by name
    notes: List[str] = field(default_factory=list)  # what this reading found that the card must state


@dataclass
class ClassificationSet:
    image_paths: List[str]
    labels: List[int]        # index into classnames
    classnames: List[str]    # open_clip's IMAGENET_CLASSNAMES for the classes present
    wnids: List[str]


# caption normalisations, as the protocol card names them
CLEANED = "white space runs (newlines included) collapsed to single spaces, ends stripped"
RAW = "none: the text exactly as in the file"
LOTLIP = ("LoTLIP's split_caption: split on newlines, '</s>' and every '.', pieces stripped, empty pieces "
          "dropped, rejoined with '. ' (no final period)")
OWN_PROTOCOL = "none: this project's own protocol"

# how a protocol's peer rule was established, as the protocol card states it
CHECKED = "checked against the peer's code at that commit"
OWN = "this project's own protocol: no peer code to check"
NO_IMAGE_TRANSFORM = "none: each image goes to the model's own preprocess as decoded"


@dataclass(frozen=True)
class ExactResize:
    """A peer's resize to size x size before the model's own preprocess, the aspect ratio not kept.

    Bicubic, as PIL's Image.resize does by default for RGB images since Pillow 7 (the peer passes no filter)."""
    size: int

    def __call__(self, image):
        from PIL import Image  # deferred: the flag parser imports this module without image libraries
        return image.resize((self.size, self.size), Image.Resampling.BICUBIC)

    @property
    def description(self) -> str:
        return (f"resized to {self.size}x{self.size} (aspect ratio not kept, PIL bicubic) before the model's "
                f"own preprocess")


@dataclass(frozen=True)
class Benchmark:
    name: str
    protocol: str            # "<protocol name>: what exactly the numbers mean"; goes into results.json
    reader: Callable         # reader(path, image_root, **{option: value for option in extra_options})
    path_help: str           # what the path argument is
    image_root_option: Optional[str] = None  # name of the option that gives the image folder, if any
    peer: str = OWN_PROTOCOL  # the peer file (repository, path, commit) whose reading this protocol follows
    normalisation: str = CLEANED  # what is done to each caption before tokenizing
    short_captions: bool = False  # one-sentence captions: the caption perturbations do not apply
    release_counts: Optional[Tuple[int, int]] = None  # (images, captions) of the full release, when fixed
    verified: str = OWN      # how the peer rule was established (CHECKED, or what it follows instead)
    image_transform: Optional[ExactResize] = None  # what the peer does to each image before the model's preprocess
    extra_options: Tuple[str, ...] = ()  # further options the reader takes, by their argparse dest

    @property
    def image_transform_text(self) -> str:
        return self.image_transform.description if self.image_transform else NO_IMAGE_TRANSFORM

    @property
    def protocol_name(self) -> str:
        return self.protocol.split(":", 1)[0]


# ----------------------------------------------------------------------------------------------
# shared checks

def _require_file(path: str, what: str) -> None:
    if not os.path.isfile(path):
        raise BenchmarkError(f"{what} not found: {path}")


def _require_dir(path: str, what: str) -> None:
    if not os.path.isdir(path):
        raise BenchmarkError(f"{what} not found (expected a folder): {path}")


def _load_json(path: str, what: str):
    _require_file(path, what)
    try:
        return read_json(path)
    except ValueError as e:  # not UTF-8 (byte offset) or not JSON (line, column); the message names the file
        raise BenchmarkError(f"{what}: {e}") from None


def _read_text(path: str) -> str:
    try:
        return read_text(path)
    except TextDecodeError as e:
        raise BenchmarkError(str(e)) from None


def _require_images_exist(paths: List[str], benchmark: str) -> None:
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        shown = ", ".join(missing[:3])
        raise BenchmarkError(f"{benchmark}: {len(missing)} of {len(paths)} images are missing, e.g. {shown}")


def _caption_text(text, where: str, keep_blank: bool, normalise: Callable[[str], str] = clean_caption) -> str:
    """A caption as the protocol uses it. A blank one stops the run unless the reference protocol keeps it."""
    if not isinstance(text, str) or not (keep_blank or text.strip()):
        raise BenchmarkError(f"empty or missing caption at {where}")
    return normalise(text)


def _require_caption(text, where: str) -> str:
    return _caption_text(text, where, keep_blank=False)


def _keep_caption(text, where: str) -> str:
    return _caption_text(text, where, keep_blank=True)


_LOTLIP_SPLIT = re.compile(r"\n|</s>|[.]")


def lotlip_normalise(text: str) -> str:
    """LoTLIP's caption normalisation (split_caption, then '. '.join), exactly as its loaders apply it."""
    return ". ".join(piece.strip() for piece in _LOTLIP_SPLIT.split(text) if piece.strip())


def _raw(text: str) -> str:
    return text


def _name_some(names: List[str], limit: int = 3) -> str:
    return ", ".join(names[:limit]) + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def _read_jsonlines(path: str, what: str):
    """[(line number, object)] of a JSON-lines file; blank lines are skipped."""
    _require_file(path, what)
    rows = []
    for line_number, line in enumerate(_read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            rows.append((line_number, json.loads(line)))
        except json.JSONDecodeError as e:
            raise BenchmarkError(f"{what} {path} line {line_number} is not valid JSON: {e}") from e
    return rows


def _one_item_per_entry(image_paths: List[str], captions: List[str], benchmark: str,
                        skipped: Optional[List[str]] = None) -> RetrievalSet:
    """One image item per annotation entry (the peers index entry i as image i and caption i)."""
    if not captions:
        raise BenchmarkError(f"{benchmark}: no image/caption pairs found")
    _require_images_exist(image_paths, benchmark)
    return RetrievalSet(image_paths, captions, list(range(len(captions))), list(skipped or []))


def _group_captions_by_image(pairs, image_root: str, benchmark: str) -> RetrievalSet:
    """(image name, caption) pairs -> RetrievalSet; images in order of first appearance."""
    image_index: Dict[str, int] = {}
    captions, caption_image = [], []
    for name, caption in pairs:
        captions.append(caption)
        caption_image.append(image_index.setdefault(name, len(image_index)))
    if not captions:
        raise BenchmarkError(f"{benchmark}: no image/caption pairs found")
    image_paths = [os.path.join(image_root, name) for name in image_index]
    _require_images_exist(image_paths, benchmark)
    return RetrievalSet(image_paths, captions, caption_image)


# ----------------------------------------------------------------------------------------------
# readers

def read_urban1k(root: str, image_root: Optional[str] = None) -> RetrievalSet:
    """Urban1k/caption/<name>.txt (caption = first line) paired with Urban1k/image/<name>.jpg.

    The release pairs every caption file with the image of the same name: a caption file without its
    image, or an image without its caption file, stops the run (the peers would crash on the first and
    silently drop the second).
    """
    caption_dir, image_dir = os.path.join(root, "caption"), os.path.join(root, "image")
    _require_dir(caption_dir, "Urban1k caption folder")
    _require_dir(image_dir, "Urban1k image folder")
    caption_files = sorted(f for f in os.listdir(caption_dir) if f.endswith(".txt"))
    if not caption_files:
        raise BenchmarkError(f"Urban1k: no .txt caption files in {caption_dir}")
    image_files = {f for f in os.listdir(image_dir) if f.endswith(".jpg")}
    caption_stems = {os.path.splitext(f)[0] for f in caption_files}
    without_image = [f for f in caption_files if os.path.splitext(f)[0] + ".jpg" not in image_files]
    without_caption = sorted(f for f in image_files if os.path.splitext(f)[0] not in caption_stems)
    if without_image or without_caption:
        problems = []
        if without_image:
            problems.append(f"{len(without_image)} of {len(caption_files)} caption files have no image "
                            f"in {image_dir}: {_name_some(without_image)}")
        if without_caption:
            problems.append(f"{len(without_caption)} of {len(image_files)} images have no caption file "
                            f"in {caption_dir}: {_name_some(without_caption)}")
        raise BenchmarkError("Urban1k: unpaired files (the release pairs caption/<name>.txt with "
                             "image/<name>.jpg): " + "; ".join(problems))
    pairs = []
    for caption_file in caption_files:
        path = os.path.join(caption_dir, caption_file)
        first_line = _read_text(path).split("\n", 1)[0]
        pairs.append((os.path.splitext(caption_file)[0] + ".jpg", _keep_caption(first_line, path)))
    return _group_captions_by_image(pairs, image_dir, "Urban1k")


def _read_sharegpt4v(json_path: str, image_root: Optional[str], count: int,
                     normalise: Callable[[str], str] = clean_caption) -> RetrievalSet:
    if image_root is None:
        raise BenchmarkError("ShareGPT4V needs the image root folder (--sharegpt4v-root)")
    _require_dir(image_root, "ShareGPT4V image root")
    entries = _load_json(json_path, "ShareGPT4V caption json")
    if not isinstance(entries, list):
        raise BenchmarkError(f"{json_path}: expected a JSON list of entries, got {type(entries).__name__}")
    if len(entries) < count:
        raise BenchmarkError(f"{json_path}: this protocol uses the first {count} entries, the file has {len(entries)}")
    image_paths, captions = [], []
    for index, entry in enumerate(entries[:count]):
        where = f"{json_path} entry {index}"
        try:
            image, caption = entry["image"], entry["conversations"][1]["value"]
        except (KeyError, IndexError, TypeError) as e:
            raise BenchmarkError(f"{where}: expected 'image' and conversations[1].value ({e!r} missing)") from e
        image_paths.append(os.path.join(image_root, image))
        captions.append(_caption_text(caption, where, keep_blank=True, normalise=normalise))
    # one entry = one image: even if two entries named the same file they stay separate items
    return _one_item_per_entry(image_paths, captions, "ShareGPT4V")


def read_sharegpt4v_1k(json_path: str, image_root: Optional[str] = None, count: int = 1000) -> RetrievalSet:
    """First `count` (1000) entries of the ShareGPT4V json; caption = conversations[1].value."""
    return _read_sharegpt4v(json_path, image_root, count)


def read_sharegpt4v_10k(json_path: str, image_root: Optional[str] = None, count: int = 10000) -> RetrievalSet:
    """LoTLIP's share4v_sam_10k.json (same entry format), first `count` (10000) entries, white space
    collapsed only (not LoTLIP's normalisation: that is read_sharegpt4v_lotlip)."""
    return _read_sharegpt4v(json_path, image_root, count)


def read_sharegpt4v_lotlip(json_path: str, image_root: Optional[str] = None, count: int = 10000) -> RetrievalSet:
    """LoTLIP's share4v_val_dataset: the first `count` (1000 or 10000) entries of share4v_sam_10k.json,
    image = root/entry['image'], caption = conversations[1].value with LoTLIP's normalisation."""
    return _read_sharegpt4v(json_path, image_root, count, normalise=lotlip_normalise)


def read_caption_csv(csv_path: str, image_root: Optional[str] = None, what: str = "caption csv",
                     separator: str = DEFAULT_SEPARATOR, img_key: str = "filepath",
                     caption_key: str = "title", group_images: bool = False) -> RetrievalSet:
    """An open_clip CSV read as training reads it (training_ext.common.csv_table: standard CSV quoting, relative image
    paths from image_root, else from the CSV's folder). Captions are the rows, in row order (so a per-row column such
    as --bucket-by-column's lines up with them). ``group_images`` False: one image per row (TULIP's Long-DCI pairs);
    True: one image per distinct image file (its resolved path), in order of first appearance, every row naming it
    one of its captions (the open_clip layout of several captions per image, read as COCO's protocol reads it). An
    empty caption or image path, a missing image, a malformed row or a file that is not UTF-8 is a BenchmarkError
    naming the file and line."""
    _require_file(csv_path, what)
    try:
        table = read_csv_table(csv_path, {"--csv-img-key": img_key, "--csv-caption-key": caption_key}, separator)
    except (ValueError, KeyError) as e:  # CsvFormatError, CsvColumnError, TextDecodeError
        raise BenchmarkError(f"{what}: {e}") from None
    base = image_base(csv_path, image_root)
    row_images, captions = [], []
    for row, (image, caption) in enumerate(zip(table.columns[img_key], table.columns[caption_key])):
        if not image.strip():
            raise BenchmarkError(f"{table.where(row)}: empty {img_key!r}")
        row_images.append(resolve_image_path(image, base))
        captions.append(_require_caption(caption, table.where(row)))
    if not captions:
        raise BenchmarkError(f"{csv_path}: no rows")
    if not group_images:
        _require_images_exist(row_images, what)
        return RetrievalSet(row_images, captions, list(range(len(captions))))
    index_of: Dict[str, int] = {}
    caption_image = [index_of.setdefault(path, len(index_of)) for path in row_images]
    image_paths = list(index_of)
    _require_images_exist(image_paths, what)
    notes = [] if len(image_paths) == len(captions) else [
        f"{len(captions)} rows name {len(image_paths)} distinct image files: each image is ranked once, and any of "
        f"its captions is a correct image->text hit"]
    return RetrievalSet(image_paths, captions, caption_image, notes=notes)


def read_long_dci(csv_path: str, image_root: Optional[str] = None) -> RetrievalSet:
    """dci_long.csv: tab-separated with `filepath` and `title`; relative paths resolve against
    image_root (default: the CSV's folder)."""
    return read_caption_csv(csv_path, image_root, "Long-DCI")


def caption_csv_benchmark(name: str, separator: str = DEFAULT_SEPARATOR, img_key: str = "filepath",
                          caption_key: str = "title") -> Benchmark:
    """A user's own held-out CSV as a named benchmark (eval's --csv NAME=PATH, with training's --csv-* flags)."""
    layout = f"{'tab' if separator == DEFAULT_SEPARATOR else repr(separator)}-separated {img_key}/{caption_key}"
    return Benchmark(name, f"{name}: open_clip caption CSV ({layout}), one caption per row, rows grouped by image "
                           f"file (each image once, in order of first appearance; any of its captions is a correct "
                           f"image->text hit)",
                     lambda path, image_root: read_caption_csv(path, image_root, name, separator, img_key,
                                                               caption_key, group_images=True),
                     "an open_clip caption CSV")


def read_coco_5k(root: str, image_root: Optional[str] = None, captions_per_image: int = 5) -> RetrievalSet:
    """COCO val2017: root/val2017/ images, root/annotations/captions_val2017.json.

    Images in id order, each with its first 5 captions in annotation order (the torchvision
    CocoCaptions order the published numbers use).
    """
    ann_path = os.path.join(root, "annotations", "captions_val2017.json")
    image_dir = image_root or os.path.join(root, "val2017")
    _require_dir(image_dir, "COCO image folder")
    data = _load_json(ann_path, "COCO caption annotations")
    try:
        file_names = {image["id"]: image["file_name"] for image in data["images"]}
        captions_of: Dict[int, List[str]] = {image_id: [] for image_id in file_names}
        for index, annotation in enumerate(data["annotations"]):
            where = f"{ann_path} annotations[{index}]"
            if annotation["image_id"] not in captions_of:
                raise BenchmarkError(f"{where}: image_id {annotation['image_id']} is not in 'images'")
            captions_of[annotation["image_id"]].append(_keep_caption(annotation["caption"], where))
    except (KeyError, TypeError) as e:
        raise BenchmarkError(f"{ann_path}: not a COCO caption file ({e!r} missing)") from e
    pairs = []
    for image_id in sorted(file_names):
        if not captions_of[image_id]:
            raise BenchmarkError(f"{ann_path}: image {image_id} ({file_names[image_id]}) has no caption")
        pairs.extend((file_names[image_id], c) for c in captions_of[image_id][:captions_per_image])
    return _group_captions_by_image(pairs, image_dir, "COCO")


def read_flickr30k_karpathy(json_path: str, image_root: Optional[str] = None, split: str = "test") -> RetrievalSet:
    """Karpathy's dataset_flickr30k.json, `test` split (1000 images x 5 captions, `sentences[].raw`)."""
    if image_root is None:
        raise BenchmarkError("Flickr30k needs the image folder (--flickr30k-images)")
    _require_dir(image_root, "Flickr30k image folder")
    data = _load_json(json_path, "Flickr30k Karpathy split json")
    pairs = []
    try:
        for index, image in enumerate(data["images"]):
            if image["split"] != split:
                continue
            for sentence_index, sentence in enumerate(image["sentences"]):
                where = f"{json_path} images[{index}].sentences[{sentence_index}]"
                pairs.append((image["filename"], _keep_caption(sentence["raw"], where)))
    except (KeyError, TypeError) as e:
        raise BenchmarkError(f"{json_path}: not a Karpathy split file ({e!r} missing)") from e
    if not pairs:
        raise BenchmarkError(f"{json_path}: no images in split '{split}'")
    return _group_captions_by_image(pairs, image_root, "Flickr30k")


# results.csv (Kaggle copy): "image_name| comment_number| comment"; one known row lacks the second '|'
_FLICKR_CSV_REST = re.compile(r"\s*(\d+)\s*\|?(.*)")


def _flickr_token_line(line: str, where: str):
    """results_20130124.token line: 'img.jpg#n<TAB>caption'."""
    key, tab, caption = line.partition("\t")
    name, hash_sign, number = key.partition("#")
    if not tab or not hash_sign or not number.strip().isdigit():
        raise BenchmarkError(f"{where}: expected 'image.jpg#n<TAB>caption'")
    return name.strip(), caption


def _flickr_csv_line(line: str, where: str):
    name, bar, rest = line.partition("|")
    match = _FLICKR_CSV_REST.fullmatch(rest)
    if not bar or match is None:
        raise BenchmarkError(f"{where}: expected 'image.jpg| n| caption'")
    return name.strip(), match.group(2)


def read_flickr30k_full(annotation_path: str, image_root: Optional[str] = None) -> RetrievalSet:
    """The full Flickr30k set (31,783 images, 5 captions each), Long-CLIP's and TULIP's protocol.

    Reads `results_20130124.token` ('img.jpg#n<TAB>caption') or the '|'-separated `results.csv`
    (header 'image_name| comment_number| comment').
    """
    if image_root is None:
        raise BenchmarkError("Flickr30k needs the image folder (--flickr30k-images)")
    _require_dir(image_root, "Flickr30k image folder")
    _require_file(annotation_path, "Flickr30k caption file")
    lines = _read_text(annotation_path).splitlines()
    is_csv = bool(lines) and lines[0].replace(" ", "").startswith("image_name|")
    parse_line = _flickr_csv_line if is_csv else _flickr_token_line
    pairs = []
    for line_number, line in enumerate(lines[1:] if is_csv else lines, start=2 if is_csv else 1):
        if not line.strip():
            continue
        where = f"{annotation_path} line {line_number}"
        name, caption = parse_line(line, where)
        pairs.append((name, _keep_caption(caption, where)))
    return _group_captions_by_image(pairs, image_root, "Flickr30k")


def read_coco_karpathy(json_path: str, image_root: Optional[str] = None, split: str = "test",
                       captions_path: Optional[str] = None) -> RetrievalSet:
    """Karpathy's dataset_coco.json, `test` split: 5000 images with all their captions (25,010), as
    clip_benchmark's mscoco_captions reads its test split. Images in COCO id order (torchvision's CocoCaptions,
    which clip_benchmark uses, sorts image ids); image path = image_root/<filepath>/<filename> (image_root
    defaults to the json's folder, holding val2014/).

    The caption text: clip_benchmark's coco_test_karpathy.json is COCO's captions_val2014.json cut to the images
    whose file name is in Karpathy's test split (mehdidc/retrieval_annotations@12638bf build_coco_splits.py), so
    with captions_path (COCO's captions_val2014.json) the captions are COCO's, each image's in annotation order
    (pycocotools' getAnnIds order), exactly clip_benchmark's text, and the notes count the captions that Karpathy's
    `raw` sentences do not repeat verbatim. Without it the captions are Karpathy's `raw` sentences in file order,
    and the notes say that they were not compared with COCO's."""
    root = image_root if image_root is not None else os.path.dirname(os.path.abspath(json_path))
    _require_dir(root, "COCO image root (the folder holding val2014/)")
    data = _load_json(json_path, "COCO Karpathy split json")
    entries = []
    try:
        for index, image in enumerate(data["images"]):
            if image["split"] != split:
                continue
            # as it is: clip_benchmark hands the text to the tokenizer untouched (the protocol's RAW normalisation)
            captions = [_caption_text(sentence["raw"], f"{json_path} images[{index}].sentences[{n}]", True, _raw)
                        for n, sentence in enumerate(image["sentences"])]
            if not captions:
                raise BenchmarkError(f"{json_path} images[{index}] ({image['filename']}) has no sentence")
            entries.append((image["cocoid"], image["filename"], os.path.join(image["filepath"], image["filename"]),
                            captions))
    except (KeyError, TypeError) as e:
        raise BenchmarkError(f"{json_path}: not Karpathy's dataset_coco.json ({e!r} missing)") from e
    if not entries:
        raise BenchmarkError(f"{json_path}: no images in split '{split}'")
    ids = [cocoid for cocoid, _, _, _ in entries]
    if len(set(ids)) != len(ids):
        raise BenchmarkError(f"{json_path}: a cocoid appears twice in split '{split}'")
    if captions_path is None:
        pairs = [(path, caption) for _, _, path, captions in sorted(entries) for caption in captions]
        notes = ["captions: Karpathy's sentences[].raw; clip_benchmark reads COCO's captions_val2014.json "
                 "(--coco-karpathy-captions), and the two were not compared on this run"]
    else:
        pairs, notes = _coco_captions_of_karpathy_images(entries, captions_path)
    data_set = _group_captions_by_image(pairs, root, "COCO Karpathy")
    data_set.notes = notes
    return data_set


def _coco_captions_of_karpathy_images(entries, captions_path: str):
    """(image path, COCO caption) pairs for Karpathy's entries, images in COCO id order, and the card's note."""
    coco = _load_json(captions_path, "COCO caption annotations (captions_val2014.json)")
    try:
        id_of_file = {image["file_name"]: image["id"] for image in coco["images"]}
        captions_of: Dict[int, List[str]] = {image_id: [] for image_id in id_of_file.values()}
        for index, annotation in enumerate(coco["annotations"]):
            if annotation["image_id"] in captions_of:
                captions_of[annotation["image_id"]].append(
                    _caption_text(annotation["caption"], f"{captions_path} annotations[{index}]", True, _raw))
    except (KeyError, TypeError) as e:
        raise BenchmarkError(f"{captions_path}: not a COCO caption file ({e!r} missing)") from e
    absent = [filename for _, filename, _, _ in entries if filename not in id_of_file]
    if absent:
        raise BenchmarkError(f"{captions_path}: {len(absent)} of {len(entries)} Karpathy test images are not in it, "
                             f"e.g. {_name_some(absent)}; give COCO's captions_val2014.json (Karpathy's test images "
                             f"are all val2014)")
    pairs, differing, total = [], 0, 0
    # clip_benchmark keys the images by COCO id (its annotation file keeps COCO's ids) and CocoCaptions sorts them
    for _, filename, path, raws in sorted(entries, key=lambda entry: id_of_file[entry[1]]):
        captions = captions_of[id_of_file[filename]]
        if not captions:
            raise BenchmarkError(f"{captions_path}: image {filename} has no caption")
        pairs.extend((path, caption) for caption in captions)
        differing += sum((Counter(captions) - Counter(raws)).values())
        total += len(captions)
    return pairs, [f"captions: COCO's {os.path.basename(captions_path)} (clip_benchmark's text); {differing} of "
                   f"{total} are not repeated verbatim by Karpathy's sentences[].raw"]


def _read_docci(root: str, image_root: Optional[str], splits: Tuple[str, ...], benchmark: str) -> RetrievalSet:
    """DOCCI's docci_descriptions.jsonlines: the entries of `splits` (in that order, file order within a
    split), image = images/<image_file>, caption = description as it is."""
    path = os.path.join(root, "docci_descriptions.jsonlines")
    image_dir = image_root if image_root is not None else os.path.join(root, "images")
    _require_dir(image_dir, "DOCCI image folder")
    selected: Dict[str, List[Tuple[str, str]]] = {split: [] for split in splits}
    for line_number, entry in _read_jsonlines(path, "DOCCI descriptions"):
        where = f"{path} line {line_number}"
        try:
            split = entry["split"]
            if split in selected:
                selected[split].append((entry["image_file"], _caption_text(entry["description"], where, True, _raw)))
        except (KeyError, TypeError) as e:
            raise BenchmarkError(f"{where}: expected 'split', 'image_file' and 'description' ({e!r} missing)") from e
    counts = Counter(name for split in splits for name, _ in selected[split])
    repeated = sorted(name for name, count in counts.items() if count > 1)
    if repeated:
        raise BenchmarkError(f"{path}: DOCCI has one description per image, but {_name_some(repeated)} "
                             f"appear more than once in split(s) {', '.join(splits)}")
    pairs = [pair for split in splits for pair in selected[split]]
    return _one_item_per_entry([os.path.join(image_dir, name) for name, _ in pairs],
                               [caption for _, caption in pairs], benchmark)


def read_docci_test(root: str, image_root: Optional[str] = None) -> RetrievalSet:
    """DOCCI test split (5,000 images): entries with split == 'test'."""
    return _read_docci(root, image_root, ("test",), "DOCCI")


def read_docci_goal(root: str, image_root: Optional[str] = None) -> RetrievalSet:
    """GOAL's DOCCI test set (5,100 images): the 'qual_test' entries, then the 'test' ones (GOAL's
    datasets/docci_test.json lists them in that order)."""
    return _read_docci(root, image_root, ("qual_test", "test"), "DOCCI (GOAL)")


# LoTLIP's iiw_retrieval_dataset: annotation file part -> image subfolder, in LoTLIP's order
IIW_PARTS = (("DOCCI_Test", "docci"), ("IIW-400", "docci_aar"), ("DCI_Test", "dci"))


def read_iiw(root: str, image_root: Optional[str] = None) -> RetrievalSet:
    """IIW (612 images) as LoTLIP reads it: root/<part>/data.jsonl for DOCCI_Test (100), IIW-400 (400)
    and DCI_Test (112), from google/imageinwords datasets/. Fields read: the image name from 'image'
    (DOCCI_Test, DCI_Test) or else 'image/key' (IIW-400), '.jpg' appended when the name holds no '.jpg';
    the caption from 'IIW' (the human-authored description), LoTLIP-normalised. Image =
    image_root/<docci|docci_aar|dci>/<name> (image_root defaults to root)."""
    images = image_root if image_root is not None else root
    image_paths, captions = [], []
    for part, subfolder in IIW_PARTS:
        path = os.path.join(root, part, "data.jsonl")
        for line_number, entry in _read_jsonlines(path, f"IIW {part} annotations"):
            where = f"{path} line {line_number}"
            if not isinstance(entry, dict):
                raise BenchmarkError(f"{where}: expected a JSON object")
            name = entry.get("image", entry.get("image/key"))
            if not isinstance(name, str) or not name:
                raise BenchmarkError(f"{where}: neither 'image' nor 'image/key' names the image")
            if ".jpg" not in name:
                name += ".jpg"
            if "IIW" not in entry:
                raise BenchmarkError(f"{where}: no 'IIW' description")
            image_paths.append(os.path.join(images, subfolder, name))
            captions.append(_caption_text(entry["IIW"], where, True, lotlip_normalise))
    return _one_item_per_entry(image_paths, captions, "IIW")


def read_iiw_flair(json_path: str, image_root: Optional[str] = None) -> RetrievalSet:
    """IIW as FLAIR evaluates it (ExplainableML/flair@0f9ce05): src/flair/params.py makes --use-finegrained-iiw
    store_true with default True, so read_iiw_pairs always takes its fine-grained branch and reads
    test_annotations.json: {"annotations": [{"image_id", "image", "caption", "caption_id"}, ...]}, one caption per
    sentence of the IIW description (FLAIR's file: 612 images, 6,204 captions). Image = image_root/<image> (default:
    the json's folder, FLAIR's --iiw-retrieval-dir); caption as it is; images in order of first appearance
    (FLAIR's extract_unique_img_list_from_data_list); an image->text hit is any of its captions (FLAIR's
    compute_retrieval)."""
    images = image_root if image_root is not None else os.path.dirname(os.path.abspath(json_path))
    data = _load_json(json_path, "FLAIR IIW test_annotations.json")
    entries = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise BenchmarkError(f"{json_path}: expected {{\"annotations\": [...]}} (FLAIR's datasets/imageinwords/"
                             f"test_annotations.json)")
    image_index: Dict[object, int] = {}
    image_paths, captions, caption_image = [], [], []
    for position, entry in enumerate(entries):
        where = f"{json_path} annotations[{position}]"
        try:
            image_id, image, caption_id = entry["image_id"], entry["image"], entry["caption_id"]
            caption = _caption_text(entry["caption"], where, True, _raw)
        except (KeyError, TypeError) as e:
            raise BenchmarkError(f"{where}: expected 'image_id', 'image', 'caption' and 'caption_id' "
                                 f"({e!r} missing)") from e
        if caption_id != position:
            # FLAIR indexes its text features by caption_id: any other numbering pairs the wrong captions
            raise BenchmarkError(f"{where}: caption_id {caption_id!r}, expected {position} (FLAIR uses caption_id "
                                 f"as the caption's row, so they must run 0, 1, 2, ... in file order)")
        path = os.path.join(images, image)
        if image_id not in image_index:
            image_index[image_id] = len(image_paths)
            image_paths.append(path)
        elif image_paths[image_index[image_id]] != path:
            raise BenchmarkError(f"{where}: image_id {image_id!r} names {image!r}, but an earlier entry gave it "
                                 f"{os.path.relpath(image_paths[image_index[image_id]], images)!r}")
        captions.append(caption)
        caption_image.append(image_index[image_id])
    repeated = [path for path, count in Counter(image_paths).items() if count > 1]
    if repeated:
        raise BenchmarkError(f"{json_path}: {_name_some(repeated)} appear under more than one image_id (FLAIR would "
                             f"rank them as different images)")
    if not captions:
        raise BenchmarkError(f"{json_path}: no annotations")
    _require_images_exist(image_paths, "IIW (FLAIR)")
    return RetrievalSet(image_paths, captions, caption_image)


def _dci_folders(root: str, image_root: Optional[str]) -> Tuple[str, str, str]:
    """(densely_captioned_images/, its annotations/, the photos folder), the two folders checked."""
    base = os.path.join(root, "densely_captioned_images")
    annotation_dir = os.path.join(base, "annotations")
    photo_dir = image_root if image_root is not None else os.path.join(base, "photos")
    _require_dir(annotation_dir, "DCI annotation folder")
    _require_dir(photo_dir, "DCI photo folder")
    return base, annotation_dir, photo_dir


def _dci_pair(path: str, photo_dir: str, caption_of: Callable[[dict], str],
              normalise: Callable[[str], str]) -> Tuple[str, str]:
    """(image path, caption) of one DCI annotation file; image = photo_dir/<annotation['image']>."""
    annotation = _load_json(path, "DCI annotation")
    try:
        return (os.path.join(photo_dir, annotation["image"]),
                _caption_text(caption_of(annotation), path, True, normalise))
    except (KeyError, TypeError) as e:
        raise BenchmarkError(f"{path}: not a DCI annotation ({e!r} missing)") from e


def _read_dci_annotations(root: str, image_root: Optional[str], caption_of: Callable[[dict], str],
                          normalise: Callable[[str], str], benchmark: str) -> RetrievalSet:
    """Every annotation file splits.json lists (train + valid + test: 7,805), in its order, as LoTLIP's
    and FLAIR's DCI loaders read them: root/densely_captioned_images/{splits.json, annotations/, photos/}.
    Annotation files that splits.json does not list are left out, as by the peers, and named."""
    base, annotation_dir, photo_dir = _dci_folders(root, image_root)
    splits_path = os.path.join(base, "splits.json")
    splits = _load_json(splits_path, "DCI splits.json")
    if not isinstance(splits, dict) or not all(isinstance(v, list) for v in splits.values()):
        raise BenchmarkError(f"{splits_path}: expected {{split name: [annotation file, ...]}}")
    files = [name for names in splits.values() for name in names]
    if len(set(files)) != len(files):
        raise BenchmarkError(f"{splits_path}: an annotation file is listed twice")
    missing = [name for name in files if not os.path.isfile(os.path.join(annotation_dir, name))]
    if missing:
        raise BenchmarkError(f"{benchmark}: {len(missing)} of {len(files)} annotation files listed in "
                             f"{splits_path} are missing from {annotation_dir}: {_name_some(missing)}")
    unlisted = sorted(set(n for n in os.listdir(annotation_dir) if n.endswith(".json")) - set(files))
    pairs = [_dci_pair(os.path.join(annotation_dir, name), photo_dir, caption_of, normalise) for name in files]
    return _one_item_per_entry([image for image, _ in pairs], [caption for _, caption in pairs], benchmark,
                               [os.path.join(annotation_dir, name) for name in unlisted])


def read_dci_lotlip(root: str, image_root: Optional[str] = None) -> RetrievalSet:
    """DCI as LoTLIP and FLAIR read it: caption = short_caption + newline + extra_caption, LoTLIP-normalised."""
    return _read_dci_annotations(root, image_root, lambda a: f"{a['short_caption']}\n{a['extra_caption']}",
                                 lotlip_normalise, "DCI (LoTLIP)")


def read_dci_extra_caption(root: str, image_root: Optional[str] = None) -> RetrievalSet:
    """The annotation files splits.json lists (LoTLIP's file list), caption = extra_caption as it is (FG-CLIP's
    caption). No peer runs this combination: FG-CLIP's own reader is read_dci_fgclip."""
    return _read_dci_annotations(root, image_root, lambda a: a["extra_caption"], _raw, "DCI (extra caption)")


# FG-CLIP's DCI evaluation resizes every photo to --image_size x --image_size; its scripts pass 224
FGCLIP_DCI_RESIZE = ExactResize(224)


def read_dci_fgclip(root: str, image_root: Optional[str] = None) -> RetrievalSet:
    """DCI as FG-CLIP's public reader takes it (360CVGroup/FG-CLIP@b08f665 fgclip/eval/dci_retrieval.py, unchanged
    since 9805ecd): every entry of the annotations folder (os.listdir; splits.json is not read), caption =
    extra_caption as it is, image = photos/<image>, caption i paired with image i. (The resize to 224x224 it
    applies to each photo is FGCLIP_DCI_RESIZE, applied by the evaluation.)

    os.listdir's order is the file system's. The pairs do not depend on it (caption and image come from the same
    file), so the names are sorted, which gives every machine the same order and sha256. An entry that is not a
    DCI annotation file stops the run, as it stops FG-CLIP's reader."""
    _, annotation_dir, photo_dir = _dci_folders(root, image_root)
    names = sorted(os.listdir(annotation_dir))
    pairs = []
    for name in names:
        path = os.path.join(annotation_dir, name)
        try:
            if not os.path.isfile(path):
                raise BenchmarkError(f"{path} is not a file")
            pairs.append(_dci_pair(path, photo_dir, lambda a: a["extra_caption"], _raw))
        except BenchmarkError as e:
            raise BenchmarkError(f"DCI (FG-CLIP): {e}. FG-CLIP's reader opens every entry of {annotation_dir}: "
                                 f"move what is not a DCI annotation file out of it") from None
    data = _one_item_per_entry([image for image, _ in pairs], [caption for _, caption in pairs], "DCI (FG-CLIP)")
    data.notes = [f"annotation files: all {len(names)} entries of annotations/ (FG-CLIP lists the folder; "
                  f"splits.json is not read), in name order"]
    return data


def _imagenet_wnid_classnames() -> Dict[str, str]:
    """wnid -> open_clip class name. open_clip's IMAGENET_CLASSNAMES is in the standard sorted-wnid
    class order; timm (an open_clip dependency) ships that wnid list."""
    from open_clip import IMAGENET_CLASSNAMES
    from timm.data import ImageNetInfo
    wnids = ImageNetInfo("imagenet-1k").label_names()
    return dict(zip(wnids, IMAGENET_CLASSNAMES))


def read_imagenet_val(root: str, image_root: Optional[str] = None) -> ClassificationSet:
    """ImageFolder of the validation set: root/<wnid>/<image>. A folder with only some classes gives
    a classification among those classes (the class count is reported)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS  # deferred: torchvision imports torch
    _require_dir(root, "ImageNet validation folder")
    classnames_of = _imagenet_wnid_classnames()
    wnids = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not wnids:
        raise BenchmarkError(f"ImageNet: no class folders in {root}")
    unknown = [w for w in wnids if w not in classnames_of]
    if unknown:
        raise BenchmarkError(f"ImageNet: folders {unknown[:3]} in {root} are not ImageNet-1k wnids (e.g. n01440764)")
    image_paths, labels = [], []
    for label, wnid in enumerate(wnids):
        folder = os.path.join(root, wnid)
        files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMG_EXTENSIONS))
        if not files:
            raise BenchmarkError(f"ImageNet: class folder {folder} holds no images")
        image_paths.extend(os.path.join(folder, f) for f in files)
        labels.extend([label] * len(files))
    return ClassificationSet(image_paths, labels, [classnames_of[w] for w in wnids], wnids)


# ----------------------------------------------------------------------------------------------
# registry: benchmark name -> reader and protocol. Peer files and what was checked: docs/benchmarks.md.

LONGCLIP = "beichenzbc/Long-CLIP@3966af9"
TULIP = "ivonajdenkoska/tulip@132c174"
# 7aa4447, not b3a369c: up to f90217b run_long_retrieval took max(dim=0) and so printed each direction under the
# other's name (docs/benchmarks.md); its loaders are the same at both commits
LOTLIP_REPO = "wuw2019/LoTLIP@7aa4447"
FLAIR = "ExplainableML/flair@0f9ce05"
FGCLIP = "360CVGroup/FG-CLIP@b08f665"
CLIP_BENCHMARK = "LAION-AI/CLIP_benchmark@48de38c"

BENCHMARKS: Dict[str, Benchmark] = {b.name: b for b in [
    Benchmark("urban1k", "urban1k: Urban1k/caption/<name>.txt first line <-> Urban1k/image/<name>.jpg, 1 caption per image",
              read_urban1k, "the Urban1k folder (holding image/ and caption/)",
              peer=f"{LONGCLIP} eval/retrieval/Urban1k.py; {TULIP} eval/urban1k.py", release_counts=(1000, 1000),
              verified=CHECKED),
    Benchmark("sharegpt4v-1k", "sharegpt4v-1k: first 1000 entries of the ShareGPT4V caption json "
              "(share-captioner_coco_lcs_sam_1246k_1107.json), 1 caption per image",
              read_sharegpt4v_1k, "the ShareGPT4V caption json", "sharegpt4v_root",
              peer=f"{TULIP} eval/sharegpt4v.py", release_counts=(1000, 1000), verified=CHECKED),
    Benchmark("sharegpt4v-10k", "sharegpt4v-10k (share4v_sam_10k.json): LoTLIP's 10,000 entries, 1 caption per image, "
              "white space collapsed only (LoTLIP's own normalisation: --sharegpt4v-10k-lotlip)",
              read_sharegpt4v_10k, "LoTLIP's share4v_sam_10k.json", "sharegpt4v_root",
              peer=f"{LOTLIP_REPO} dataloaders/share4v.py (entries only)", release_counts=(10000, 10000),
              verified="this project's own normalisation of LoTLIP's entries (the entries checked against "
                       "LoTLIP's code at that commit)"),
    Benchmark("sharegpt4v-1k-lotlip", "sharegpt4v-sam-1k-lotlip: first 1000 entries of LoTLIP's share4v_sam_10k.json, "
              "LoTLIP's caption normalisation, 1 caption per image",
              lambda path, root: read_sharegpt4v_lotlip(path, root, 1000), "LoTLIP's share4v_sam_10k.json",
              "sharegpt4v_root", peer=f"{LOTLIP_REPO} dataloaders/share4v.py, README.md; {FLAIR} src/flair/data.py",
              normalisation=LOTLIP, release_counts=(1000, 1000), verified=CHECKED),
    Benchmark("sharegpt4v-10k-lotlip", "sharegpt4v-sam-10k-lotlip: all 10,000 entries of LoTLIP's share4v_sam_10k.json, "
              "LoTLIP's caption normalisation, 1 caption per image",
              read_sharegpt4v_lotlip, "LoTLIP's share4v_sam_10k.json", "sharegpt4v_root",
              peer=f"{LOTLIP_REPO} dataloaders/share4v.py, README.md; {FLAIR} src/flair/data.py",
              normalisation=LOTLIP, release_counts=(10000, 10000), verified=CHECKED),
    Benchmark("long-dci", "long-dci: dci_long.csv (DCI entries with a non-empty extra_caption), 1 caption per image",
              read_long_dci, "dci_long.csv (tab-separated filepath/title)", "long_dci_root",
              peer=f"{TULIP} eval/dci_long.py, open_clip/data_prep/dci_long_part.py", verified=CHECKED),
    Benchmark("dci-lotlip", "dci-7805-lotlip: every DCI annotation listed in splits.json, caption = short_caption + "
              "extra_caption, LoTLIP's caption normalisation, 1 caption per image",
              read_dci_lotlip, "the DCI folder (holding densely_captioned_images/)", "dci_images",
              peer=f"{LOTLIP_REPO} dataloaders/dci_retrieval.py; {FLAIR} src/flair/data.py read_dci_pairs",
              normalisation=LOTLIP, release_counts=(7805, 7805), verified=CHECKED),
    Benchmark("dci-fgclip", "dci-annotations-fgclip: every file in DCI's annotations/ folder (FG-CLIP lists the "
              "folder; splits.json not read), caption = extra_caption alone, photos resized to 224x224, "
              "1 caption per image",
              read_dci_fgclip, "the DCI folder (holding densely_captioned_images/)", "dci_images",
              peer=f"{FGCLIP} fgclip/eval/dci_retrieval.py, scripts/eval/eval_long.sh (--image_size 224)",
              normalisation=RAW, verified=CHECKED, image_transform=FGCLIP_DCI_RESIZE),
    Benchmark("dci-extra-caption", "dci-7805-extra-caption: every DCI annotation listed in splits.json, caption = "
              "extra_caption alone, no resize, 1 caption per image (LoTLIP's files with FG-CLIP's caption)",
              read_dci_extra_caption, "the DCI folder (holding densely_captioned_images/)", "dci_images",
              normalisation=RAW, release_counts=(7805, 7805),
              verified="this project's own combination: no peer runs it (the file list is LoTLIP's, the caption "
                       "FG-CLIP's; FG-CLIP's own protocol is dci-annotations-fgclip)"),
    Benchmark("docci", "docci-test-5k: DOCCI docci_descriptions.jsonlines entries with split == 'test', "
              "caption = description, 1 caption per image",
              read_docci_test, "the DOCCI folder (holding docci_descriptions.jsonlines and images/)", "docci_images",
              peer="google/docci release (docci_descriptions.jsonlines)", normalisation=RAW,
              release_counts=(5000, 5000),
              verified="follows the release's field description; no peer code reads this file this way (FLAIR's "
                       "DOCCI protocol reads its own test_annotations.json, absent from its public snapshot)"),
    Benchmark("docci-goal", "docci-goal-5100: DOCCI entries with split 'qual_test' then 'test' (GOAL's test set), "
              "caption = description, 1 caption per image",
              read_docci_goal, "the DOCCI folder (holding docci_descriptions.jsonlines and images/)", "docci_images",
              peer="PerceptualAI-Lab/GOAL@34f018e retrieval_goal.py, datasets/docci_test.json",
              normalisation=RAW, release_counts=(5100, 5100), verified=CHECKED),
    Benchmark("iiw", "iiw-612-lotlip: IIW DOCCI_Test + IIW-400 + DCI_Test data.jsonl ('IIW' description), "
              "LoTLIP's caption normalisation, 1 caption per image",
              read_iiw, "the IIW folder (holding DOCCI_Test/, IIW-400/, DCI_Test/ data.jsonl)", "iiw_images",
              peer=f"{LOTLIP_REPO} dataloaders/iiw_retrieval.py", normalisation=LOTLIP, release_counts=(612, 612),
              verified=CHECKED),
    Benchmark("iiw-flair", "iiw-612-sentences-flair: FLAIR's IIW test_annotations.json, the 612 IIW images with "
              "one caption per sentence (6,204); image->text hit = any of its captions",
              read_iiw_flair, "FLAIR's IIW test_annotations.json (datasets/imageinwords/ in its repository)",
              "iiw_images", peer=f"{FLAIR} src/flair/data.py read_iiw_pairs (finegrained), src/flair/params.py, "
                                 f"src/flair/train.py compute_retrieval",
              normalisation=RAW, release_counts=(612, 6204), verified=CHECKED),
    Benchmark("coco-5k", "coco-val2017-5k: val2017 images, first 5 captions each; image->text hit = any of its captions",
              read_coco_5k, "the COCO folder (holding val2017/ and annotations/captions_val2017.json)",
              peer=f"{LONGCLIP} eval/retrieval/coco.py; {TULIP} eval/coco.py", short_captions=True,
              release_counts=(5000, 25000), verified=CHECKED),
    Benchmark("coco-karpathy-5k", "coco-karpathy-5k-all: Karpathy test split (5000 images, all 25,010 captions); "
              "image->text hit = any of its captions",
              lambda path, root, coco_karpathy_captions=None: read_coco_karpathy(
                  path, root, captions_path=coco_karpathy_captions),
              "Karpathy's dataset_coco.json", "coco_karpathy_images",
              peer=f"{CLIP_BENCHMARK} clip_benchmark/datasets/builder.py (mscoco_captions), "
                   "metrics/zeroshot_retrieval.py; mehdidc/retrieval_annotations@12638bf build_coco_splits.py",
              normalisation=RAW, short_captions=True, release_counts=(5000, 25010),
              verified=CHECKED + " (the caption text only with --coco-karpathy-captions; the card's notes say which)",
              extra_options=("coco_karpathy_captions",)),
    Benchmark("flickr30k-karpathy-1k", "flickr30k-karpathy-1k: Karpathy test split (1000 images x 5 captions); "
              "image->text hit = any of its captions",
              read_flickr30k_karpathy, "Karpathy's dataset_flickr30k.json", "flickr30k_images",
              short_captions=True, release_counts=(1000, 5000),
              verified="this project's own reading of Karpathy's split file: no peer code checked"),
    Benchmark("flickr30k-full-31k", "flickr30k-full-31k: all 31,783 images x 5 captions (Long-CLIP/TULIP protocol); "
              "image->text hit = any of its captions",
              read_flickr30k_full, "results_20130124.token or results.csv", "flickr30k_images",
              peer=f"{LONGCLIP} eval/retrieval/flickr30k.py; {TULIP} eval/flickr30.py", short_captions=True,
              release_counts=(31783, 158915), verified=CHECKED),
    Benchmark("imagenet", "imagenet-zeroshot: open_clip zero-shot classifier (OPENAI_IMAGENET_TEMPLATES) on the "
              "validation ImageFolder, top-1/top-5 accuracy over the classes present",
              read_imagenet_val, "the ImageNet validation ImageFolder (<wnid>/<image>)",
              peer="open_clip_train zero_shot.py, the installed open_clip_torch (3.3.x)",
              release_counts=(50000, 1000),
              verified="runs the installed open_clip's own build_zero_shot_classifier and templates"),
]}

IMAGE_ROOT_HELP = {
    "dci_images": "the DCI photos folder (default: <DCI>/densely_captioned_images/photos)",
    "docci_images": "the DOCCI images folder (default: <DOCCI>/images)",
    "iiw_images": "the folder holding IIW's docci/, docci_aar/ and dci/ image folders (default: the --iiw folder; "
                  "for --iiw-flair, the folder of its test_annotations.json)",
    "coco_karpathy_images": "the folder holding val2014/ (default: dataset_coco.json's folder)",
}
