"""Readers that turn image/caption datasets into a list of `Sample`s (paths and captions, no pixels).

Three on-disk layouts are read:
- an open_clip CSV (training's reader, training_ext.common.csv_table; image path and caption columns by name,
  optional short-caption column);
- a train-CLIP style folder, paired by ``training_ext.common.folder_pairs`` (shared with folder-dataset training);
- a COCO-style caption annotation file: {"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}.

Images are not decoded here: the shard writer reads them, so a missing or undecodable image is found and reported
there; ``check_images_exist`` (the CSV-only scripts' check) reads each file's first bytes.
"""
import os
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from training_ext.common.captions import clean_caption, first_sentence
from training_ext.common.csv_table import image_base, read_csv_table, resolve_image_path
from training_ext.common.file_io import write_lines, write_tsv
from training_ext.common.image_files import MISSING, image_file_problem
from training_ext.common.text_files import read_json
from training_ext.common.folder_pairs import FolderPairs, read_caption_lines
from training_ext.data.keyed_captions import csv_row_key


# How a source holding several captions for one image turns them into samples.
CAPTION_POLICIES = ("first", "each", "join")


@dataclass(frozen=True)
class Sample:
    """One image/caption pair to be written: `caption` is the long caption, `short_caption` the short one."""
    image_path: str
    caption: str
    short_caption: str
    source_id: str
    extra: Mapping = field(default_factory=dict)  # JSON-able metadata carried into the shard's .json

    def descriptor(self) -> list:
        """What identifies the sample's content (used to check that a resumed pack reads the same input)."""
        return [self.image_path, self.caption, self.short_caption, self.source_id, dict(self.extra)]


def make_sample(image_path: str, caption: str, source_id: str, short_caption: Optional[str] = None,
                extra: Optional[Mapping] = None) -> Sample:
    """A sample with a cleaned caption; the short caption defaults to the caption's first sentence."""
    caption = clean_caption(caption)
    # an absent or blank short caption falls back to the first-sentence rule
    short = clean_caption(short_caption or "") or first_sentence(caption)
    return Sample(image_path=image_path, caption=caption, short_caption=short, source_id=str(source_id),
                  extra=dict(extra or {}))


def samples_for_captions(image_path: str, captions: Sequence[str], source_id: str, policy: str,
                         extra: Optional[Mapping] = None) -> List[Sample]:
    """Expand one image's captions into samples: `first` caption only, `each` caption its own sample
    (the image is repeated), or all captions `join`ed into one long caption. Every sample's metadata
    keeps all captions, so `first` loses nothing."""
    if policy not in CAPTION_POLICIES:
        raise ValueError(f"caption policy must be one of {CAPTION_POLICIES}, got {policy!r}")
    captions = [clean_caption(c) for c in captions if clean_caption(c)]
    if not captions:
        raise ValueError(f"{image_path}: no caption")
    extra = {**(extra or {}), "captions": captions}
    if policy == "first":
        return [make_sample(image_path, captions[0], source_id, extra=extra)]
    if policy == "join":
        return [make_sample(image_path, " ".join(captions), source_id, extra=extra)]
    return [make_sample(image_path, text, f"{source_id}#{n}", extra=extra) for n, text in enumerate(captions)]


def resolve_path(path: str, root: Optional[str]) -> str:
    """An absolute path: relative paths are taken relative to `root` (the current folder if None)."""
    return resolve_image_path(path, root or os.getcwd())


MISSING_POLICIES = ("drop", "keep", "error")


def check_images_exist(paths: Sequence[str], list_path: str, policy: str = "drop", progress: bool = False,
                       unreadable_path: Optional[str] = None) -> Dict[str, str]:
    """{path: why} for the paths (first occurrence order, no repeats) that are not files ("missing") and, with
    `unreadable_path`, those that do not start like an image (``training_ext.common.image_files``: an HTML page
    saved as .jpg, an empty file, a folder; a read of the first bytes each). The missing ones are written to
    `list_path` (a path a line), the others to `unreadable_path` (path, reason); both are always written (empty
    when none), so a bad image is reported, never silently dropped. Image data past the header is not checked.
    `policy="error"` raises FileNotFoundError when any is found; what `drop` or `keep` does is the caller's."""
    from tqdm import tqdm

    if policy not in MISSING_POLICIES:
        raise ValueError(f"missing-image policy must be one of {MISSING_POLICIES}, got {policy!r}")
    unique = list(dict.fromkeys(paths))

    def problem(path: str) -> Optional[str]:
        if unreadable_path is not None:
            return image_file_problem(path)
        return None if os.path.isfile(path) else MISSING

    problems = {path: why for path in tqdm(unique, desc="checking images", unit=" images", disable=not progress)
                if (why := problem(path)) is not None}
    write_lines(list_path, [path for path, why in problems.items() if why == MISSING])
    if unreadable_path is not None:
        write_tsv(unreadable_path, ("path", "reason"),
                  ([path, why] for path, why in problems.items() if why != MISSING))
    if problems and policy == "error":
        path, why = next(iter(problems.items()))
        lists = list_path + (f" and {unreadable_path}" if unreadable_path else "")
        raise FileNotFoundError(f"{len(problems)} image(s) missing or not images (listed in {lists}), e.g. "
                                f"{path}: {why}")
    return problems


# ---------------------------------------------------------------------------------------------- CSV

def samples_from_csv(csv_path: str, img_key: str = "filepath", caption_key: str = "title",
                     short_caption_key: Optional[str] = None, separator: str = "\t",
                     image_root: Optional[str] = None) -> List[Sample]:
    """Samples from an open_clip CSV, read by training's reader and rules (training_ext.common.csv_table): relative
    image paths start from `image_root`, else from the CSV's folder. Raises what read_csv_table raises, and
    ValueError naming file and line for a row with an empty image path or caption."""
    table = read_csv_table(csv_path, {"--csv-img-key": img_key, "--csv-caption-key": caption_key,
                                      "--csv-short-caption-key": short_caption_key}, separator)
    base = image_base(csv_path, image_root)
    shorts = table.columns[short_caption_key] if short_caption_key else [None] * len(table)
    samples = []
    for row_number, (image, caption, short) in enumerate(zip(table.columns[img_key], table.columns[caption_key],
                                                             shorts)):
        if not image.strip() or not clean_caption(caption):
            raise ValueError(f"{table.where(row_number)} has an empty {img_key!r} or {caption_key!r}")
        samples.append(make_sample(resolve_image_path(image, base), caption, csv_row_key(row_number), short,
                                   extra={"csv_row": row_number}))
    return samples


def samples_from_folder(pairs: FolderPairs, policy: str = "first") -> Tuple[List[Sample], List[str]]:
    """Samples for a paired folder, and the caption files that held no caption (reported, not packed)."""
    samples, empty_texts = [], []
    for image, text in pairs.pairs:
        captions = read_caption_lines(text)
        if not captions:
            empty_texts.append(text)
            continue
        source_id = os.path.splitext(os.path.relpath(image, pairs.root))[0]
        samples.extend(samples_for_captions(image, captions, source_id, policy,
                                            extra={"caption_file": text}))
    return samples, empty_texts


# --------------------------------------------------------------------------------------------- COCO

def _coco_field(record, key: str, where: str):
    if not isinstance(record, dict) or key not in record:
        raise ValueError(f"{where}: missing key {key!r}")
    return record[key]


def samples_from_coco(annotation_path: str, image_root: str, policy: str = "first") -> Tuple[List[Sample], List[str]]:
    """Samples for a COCO-style caption file, images in the file's order; and the images without any
    caption (reported, not packed). A caption naming an unknown image id raises."""
    data = read_json(annotation_path)
    images = _coco_field(data, "images", annotation_path)
    annotations = _coco_field(data, "annotations", annotation_path)
    file_names: Dict = {}
    for n, image in enumerate(images):
        where = f"{annotation_path}: images[{n}]"
        file_names[_coco_field(image, "id", where)] = _coco_field(image, "file_name", where)
    captions: Dict = {image_id: [] for image_id in file_names}
    for n, annotation in enumerate(annotations):
        where = f"{annotation_path}: annotations[{n}]"
        image_id = _coco_field(annotation, "image_id", where)
        if image_id not in captions:
            raise ValueError(f"{where}: image_id {image_id!r} is not in 'images'")
        captions[image_id].append(str(_coco_field(annotation, "caption", where)))

    samples, uncaptioned = [], []
    for image_id, file_name in file_names.items():
        path = resolve_path(file_name, image_root)
        if not any(clean_caption(c) for c in captions[image_id]):
            uncaptioned.append(path)
            continue
        samples.extend(samples_for_captions(path, captions[image_id], str(image_id), policy,
                                            extra={"coco_image_id": image_id}))
    return samples, uncaptioned


# ---------------------------------------------------------------------------------------- CSV out

# open_clip CSV columns written by the preparation scripts; training reads
# --csv-img-key filepath --csv-caption-key title --csv-short-caption-key short_title.
CSV_COLUMNS = ("filepath", "title", "short_title", "source_id")


def write_samples_csv(path: str, samples: Sequence[Sample], relative_to: Optional[str] = None) -> int:
    """Write samples as a tab-separated open_clip CSV. Image paths are absolute, or relative to
    `relative_to` when given (training and evaluation then need --csv-image-root `relative_to`, unless it is the
    CSV's own folder). Returns the number of rows."""
    def filepath(sample: Sample) -> str:
        return os.path.relpath(sample.image_path, relative_to) if relative_to else sample.image_path

    return write_tsv(path, CSV_COLUMNS, ([filepath(s), s.caption, s.short_caption, s.source_id] for s in samples))
