"""Folder datasets (train-CLIP style) for both stages: ``x.jpg`` pairs with ``x.txt`` anywhere under the root.

A caption file holds one caption a line. Which line a sample reads:
- ``caption_line='random'`` (default): a line drawn afresh every epoch (deterministic in seed, epoch, image);
- ``caption_line='first'``: always the first line, the long caption.
The short caption (stage 2) is ``short_line='first-sentence'`` (the caption's first sentence, TULIP's rule), an
integer N (line N; the first sentence when the file is shorter) or ``'random'`` (a random other line). Pairing
is ``training_ext.common.folder_pairs.pair_folder``; images without a caption file, caption files without an image and
empty caption files are reported with their counts, never silently dropped.
Sample keys for a teacher cache are ``<image path relative to root, no extension>#<caption line>``.
"""
import logging
import random
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple, Union

from open_clip_train.data import SharedEpoch
from PIL import Image
from torch.utils.data import Dataset

from training_ext.common.captions import first_sentence
from training_ext.data.keyed_captions import folder_line_key
from training_ext.common.folder_pairs import pair_folder, read_caption_lines

CAPTION_LINES = ("random", "first")
_SHOWN = 3


@dataclass
class FolderItem:
    image: str
    captions: List[str]


def parse_short_line(value: str) -> Union[str, int]:
    """--folder-short-line: 'first-sentence', 'random' or a line number (0-based)."""
    if value in ("first-sentence", "random"):
        return value
    try:
        line = int(value)
    except ValueError:
        raise ValueError(f"short caption line must be 'first-sentence', 'random' or a line number, got {value!r}")
    if line < 0:
        raise ValueError(f"short caption line must be >= 0, got {line}")
    return line


def _report(what: str, paths: List[str], root: str) -> None:
    if paths:
        logging.warning(f"{root}: {len(paths)} {what} (e.g. {', '.join(paths[:_SHOWN])})")


def read_folder(root: str, progress: bool = False) -> Tuple[str, List[FolderItem]]:
    """(absolute root, items with at least one caption); orphans and empty caption files are logged as counts."""
    pairs = pair_folder(root, progress=progress)
    items, empty = [], []
    for image, text in pairs.pairs:
        captions = read_caption_lines(text)
        if captions:
            items.append(FolderItem(image, captions))
        else:
            empty.append(text)
    _report("images without a caption file, skipped", pairs.orphan_images, pairs.root)
    _report("caption files without an image, ignored", pairs.orphan_texts, pairs.root)
    _report("empty caption files, their images skipped", empty, pairs.root)
    if not items:
        raise ValueError(f"{pairs.root}: no image with a caption file (x.jpg needs an x.txt with a caption)")
    logging.info(f"{pairs.root}: {len(items)} image/caption pairs")
    return pairs.root, items


class FolderDataset(Dataset):
    """Stage 1: ``(long_ids,)``; with a transform (stage 2 or validation): ``(image, long_ids, short_ids)``.

    ``shared_epoch`` is the DataInfo's: DataInfo.set_epoch reaches the dataloader workers through it, so a
    random caption line changes every epoch and a resumed run draws the same lines again.
    """

    def __init__(self, root: str, tokenizer: Callable, transform: Optional[Callable] = None,
                 caption_line: str = "random", short_line: Union[str, int] = "first-sentence", seed: int = 0,
                 progress: bool = False):
        if caption_line not in CAPTION_LINES:
            raise ValueError(f"caption line must be one of {CAPTION_LINES}, got {caption_line!r}")
        self.root, self.items = read_folder(root, progress)
        self.tokenize = tokenizer
        self.transform = transform
        self.caption_line = caption_line
        self.short_line = short_line
        self.seed = seed
        self.shared_epoch = SharedEpoch(0)

    def __len__(self):
        return len(self.items)

    def _rng(self, index: int, purpose: int) -> random.Random:
        return random.Random(hash((self.seed, self.shared_epoch.get_value(), index, purpose)))

    def line_of(self, index: int) -> int:
        """The caption line sample ``index`` reads this epoch."""
        count = len(self.items[index].captions)
        return 0 if self.caption_line == "first" or count == 1 else self._rng(index, 0).randrange(count)

    def key(self, index: int) -> str:
        return folder_line_key(self.root, self.items[index].image, self.line_of(index))

    def caption(self, index: int) -> str:
        return self.items[index].captions[self.line_of(index)]

    def short_caption(self, index: int) -> str:
        captions, line = self.items[index].captions, self.line_of(index)
        if isinstance(self.short_line, int):
            return captions[self.short_line] if self.short_line < len(captions) else first_sentence(captions[line])
        if self.short_line == "random" and len(captions) > 1:
            others = [n for n in range(len(captions)) if n != line]
            return captions[self._rng(index, 1).choice(others)]
        return first_sentence(captions[line])

    def _image(self, index: int):
        path = self.items[index].image
        try:
            with Image.open(path) as image:
                return self.transform(image.convert("RGB"))
        except Exception as error:  # missing or corrupt: name the file rather than fail deep inside PIL
            raise RuntimeError(f"{self.root}: cannot read image {path}: {error}") from error

    def __getitem__(self, index):
        long_ids = self.tokenize([self.caption(index)])[0]
        if self.transform is None:
            return (long_ids,)
        return self._image(index), long_ids, self.tokenize([self.short_caption(index)])[0]
