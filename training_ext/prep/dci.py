"""DCI (Densely Captioned Images, Meta) annotations -> the Long-DCI retrieval benchmark's pairs.

DCI's release lays out `densely_captioned_images/{annotations,photos,complete}/` (+ `splits.json`). Each
`annotations/*.json` is one image: {"image": "<file name under photos/>", "short_caption": ...,
"extra_caption": <the long, free-form description>, "mask_data": ..., "mask_keys": ...}.

Long-DCI rule (TULIP's `dci_long.csv`, which this reproduces): every annotation file in the folder (sorted by
file name) whose `extra_caption` is non-empty gives one pair (photos/<image>, extra_caption); the
short caption and the mask captions are not used (TULIP reports about 7.8k pairs). Here a caption
of only white space counts as empty too, and captions are whitespace-normalised (newlines -> spaces),
which CLIP's tokenizer does anyway.
(LoTLIP's DCI reader differs: it lists the files in `splits.json` and uses short_caption + "\\n" +
extra_caption; that is another benchmark.)
"""
import os
from dataclasses import dataclass
from typing import Iterable, List, Tuple

from training_ext.common.captions import clean_caption
from training_ext.common.text_files import read_json


@dataclass(frozen=True)
class DCIPair:
    annotation_file: str
    image: str       # file name relative to the photos folder, as the annotation gives it
    caption: str     # cleaned extra_caption


def annotation_files(annotations_dir: str) -> List[str]:
    if not os.path.isdir(annotations_dir):
        raise FileNotFoundError(f"DCI annotations folder {annotations_dir} is not a directory")
    return sorted(os.path.join(annotations_dir, name) for name in os.listdir(annotations_dir)
                  if name.endswith(".json"))


def read_annotation(path: str) -> Tuple[str, str]:
    """(image, cleaned extra_caption) of one annotation file; a clear error names the file and key."""
    data = read_json(path)  # ValueError naming the file: not UTF-8 (byte offset) or not JSON (line, column)
    for key in ("image", "extra_caption"):
        if not isinstance(data, dict) or key not in data:
            raise ValueError(f"{path}: missing key {key!r}")
    if not isinstance(data["image"], str) or not data["image"].strip():
        raise ValueError(f"{path}: 'image' is not a file name")
    return data["image"].strip(), clean_caption(data["extra_caption"] or "")


def long_dci_pairs(paths: Iterable[str]) -> Tuple[List[DCIPair], List[str]]:
    """The Long-DCI pairs, and the annotation files left out for an empty extra_caption."""
    pairs, empty = [], []
    for path in paths:
        image, caption = read_annotation(path)
        if caption:
            pairs.append(DCIPair(annotation_file=path, image=image, caption=caption))
        else:
            empty.append(path)
    return pairs, empty
