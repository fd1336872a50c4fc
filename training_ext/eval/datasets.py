"""Readers for the evaluation benchmarks, each from its original on-disk layout (protocols: docs/benchmarks.md).

A retrieval reader returns a RetrievalSet: image paths, captions, and for each caption the index of
its image. A classification reader returns a ClassificationSet. Every path comes from the caller;
a missing or malformed file is reported with its path (and row or key) in a BenchmarkError.
"""
import csv
import json
import os
import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

from torchvision.datasets.folder import IMG_EXTENSIONS

from training_ext.common.captions import clean_caption


class BenchmarkError(ValueError):
    """A benchmark file is missing or does not have the expected layout."""


@dataclass
class RetrievalSet:
    image_paths: List[str]
    captions: List[str]
    caption_image: List[int]  # caption_image[c] = index into image_paths of the image caption c describes


@dataclass
class ClassificationSet:
    image_paths: List[str]
    labels: List[int]        # index into classnames
    classnames: List[str]    # open_clip's IMAGENET_CLASSNAMES for the classes present
    wnids: List[str]


@dataclass(frozen=True)
class Benchmark:
    name: str
    protocol: str            # what exactly the numbers mean; goes into results.json
    reader: Callable         # reader(path, image_root) -> RetrievalSet | ClassificationSet
    path_help: str           # what the path argument is
    image_root_option: Optional[str] = None  # name of the option that gives the image folder, if any


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
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise BenchmarkError(f"{what} {path} is not valid JSON: {e}") from e


def _require_images_exist(paths: List[str], benchmark: str) -> None:
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        shown = ", ".join(missing[:3])
        raise BenchmarkError(f"{benchmark}: {len(missing)} of {len(paths)} images are missing, e.g. {shown}")


def _require_caption(text, where: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise BenchmarkError(f"empty or missing caption at {where}")
    return clean_caption(text)


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
    """Urban1k/caption/<name>.txt (caption = first line) paired with Urban1k/image/<name>.jpg."""
    caption_dir, image_dir = os.path.join(root, "caption"), os.path.join(root, "image")
    _require_dir(caption_dir, "Urban1k caption folder")
    _require_dir(image_dir, "Urban1k image folder")
    caption_files = sorted(f for f in os.listdir(caption_dir) if f.endswith(".txt"))
    if not caption_files:
        raise BenchmarkError(f"Urban1k: no .txt caption files in {caption_dir}")
    pairs = []
    for caption_file in caption_files:
        path = os.path.join(caption_dir, caption_file)
        with open(path, "r", encoding="utf-8") as f:
            first_line = f.readline()
        pairs.append((os.path.splitext(caption_file)[0] + ".jpg", _require_caption(first_line, path)))
    return _group_captions_by_image(pairs, image_dir, "Urban1k")


def _read_sharegpt4v(json_path: str, image_root: Optional[str], count: int) -> RetrievalSet:
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
        captions.append(_require_caption(caption, where))
    _require_images_exist(image_paths, "ShareGPT4V")
    # one entry = one image: even if two entries named the same file they stay separate items
    return RetrievalSet(image_paths, captions, list(range(count)))


def read_sharegpt4v_1k(json_path: str, image_root: Optional[str] = None, count: int = 1000) -> RetrievalSet:
    """First `count` (1000) entries of the ShareGPT4V json; caption = conversations[1].value."""
    return _read_sharegpt4v(json_path, image_root, count)


def read_sharegpt4v_10k(json_path: str, image_root: Optional[str] = None, count: int = 10000) -> RetrievalSet:
    """LoTLIP's share4v_sam_10k.json (same entry format), first `count` (10000) entries."""
    return _read_sharegpt4v(json_path, image_root, count)


def read_caption_csv(csv_path: str, image_root: Optional[str] = None, what: str = "caption csv") -> RetrievalSet:
    """An open_clip CSV (tab-separated `filepath`, `title`), one caption per image; relative paths resolve
    against image_root (default: the CSV's folder)."""
    _require_file(csv_path, what)
    root = image_root if image_root is not None else os.path.dirname(os.path.abspath(csv_path))
    with open(csv_path, "r", encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        columns = reader.fieldnames or []
        if "filepath" not in columns or "title" not in columns:
            raise BenchmarkError(f"{csv_path}: expected tab-separated columns 'filepath' and 'title', found {columns}")
        rows = list(reader)
    image_paths, captions = [], []
    for line_number, row in enumerate(rows, start=2):
        where = f"{csv_path} line {line_number}"
        if not row["filepath"]:
            raise BenchmarkError(f"{where}: empty filepath")
        image_paths.append(os.path.join(root, row["filepath"]))
        captions.append(_require_caption(row["title"], where))
    if not captions:
        raise BenchmarkError(f"{csv_path}: no rows")
    _require_images_exist(image_paths, what)
    return RetrievalSet(image_paths, captions, list(range(len(captions))))


def read_long_dci(csv_path: str, image_root: Optional[str] = None) -> RetrievalSet:
    """dci_long.csv: tab-separated with `filepath` and `title`; relative paths resolve against
    image_root (default: the CSV's folder)."""
    return read_caption_csv(csv_path, image_root, "Long-DCI")


def caption_csv_benchmark(name: str) -> Benchmark:
    """A user's own held-out CSV as a named benchmark (eval's --csv NAME=PATH)."""
    return Benchmark(name, f"{name}: open_clip caption CSV (tab-separated filepath/title), 1 caption per image",
                     lambda path, image_root: read_caption_csv(path, image_root, name), "an open_clip caption CSV")


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
            captions_of[annotation["image_id"]].append(_require_caption(annotation["caption"], where))
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
                pairs.append((image["filename"], _require_caption(sentence["raw"], where)))
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
    with open(annotation_path, "r", encoding="utf-8") as f:
        lines = f.read().splitlines()
    is_csv = bool(lines) and lines[0].replace(" ", "").startswith("image_name|")
    parse_line = _flickr_csv_line if is_csv else _flickr_token_line
    pairs = []
    for line_number, line in enumerate(lines[1:] if is_csv else lines, start=2 if is_csv else 1):
        if not line.strip():
            continue
        where = f"{annotation_path} line {line_number}"
        name, caption = parse_line(line, where)
        pairs.append((name, _require_caption(caption, where)))
    return _group_captions_by_image(pairs, image_root, "Flickr30k")


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
# registry: benchmark name -> reader and protocol

BENCHMARKS: Dict[str, Benchmark] = {b.name: b for b in [
    Benchmark("urban1k", "urban1k: Urban1k/caption/<name>.txt first line <-> Urban1k/image/<name>.jpg, 1 caption per image",
              read_urban1k, "the Urban1k folder (holding image/ and caption/)"),
    Benchmark("sharegpt4v-1k", "sharegpt4v-1k: first 1000 entries of the ShareGPT4V caption json "
              "(share-captioner_coco_lcs_sam_1246k_1107.json), 1 caption per image",
              read_sharegpt4v_1k, "the ShareGPT4V caption json", "sharegpt4v_root"),
    Benchmark("sharegpt4v-10k", "sharegpt4v-10k (share4v_sam_10k.json): LoTLIP's 10,000 entries, 1 caption per image",
              read_sharegpt4v_10k, "LoTLIP's share4v_sam_10k.json", "sharegpt4v_root"),
    Benchmark("long-dci", "long-dci: dci_long.csv (DCI entries with a non-empty extra_caption), 1 caption per image",
              read_long_dci, "dci_long.csv (tab-separated filepath/title)", "long_dci_root"),
    Benchmark("coco-5k", "coco-val2017-5k: val2017 images, first 5 captions each; image->text hit = any of its captions",
              read_coco_5k, "the COCO folder (holding val2017/ and annotations/captions_val2017.json)"),
    Benchmark("flickr30k-karpathy-1k", "flickr30k-karpathy-1k: Karpathy test split (1000 images x 5 captions); "
              "image->text hit = any of its captions",
              read_flickr30k_karpathy, "Karpathy's dataset_flickr30k.json", "flickr30k_images"),
    Benchmark("flickr30k-full-31k", "flickr30k-full-31k: all 31,783 images x 5 captions (Long-CLIP/TULIP protocol); "
              "image->text hit = any of its captions",
              read_flickr30k_full, "results_20130124.token or results.csv", "flickr30k_images"),
    Benchmark("imagenet", "imagenet-zeroshot: open_clip zero-shot classifier (OPENAI_IMAGENET_TEMPLATES) on the "
              "validation ImageFolder, top-1/top-5 accuracy over the classes present",
              read_imagenet_val, "the ImageNet validation ImageFolder (<wnid>/<image>)"),
]}
