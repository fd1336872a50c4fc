"""Folder datasets (train-CLIP style) for both stages: ``x.jpg`` pairs with ``x.txt`` anywhere under the root.

A caption file holds one caption a line. Which line a sample reads:
- ``caption_line='random'`` (default): a line drawn afresh every epoch (deterministic in seed, epoch, image);
- ``caption_line='first'``: always the first line, the long caption.
The short caption (stage 2) is ``short_line='first-sentence'`` (the caption's first sentence, TULIP's rule), an
integer N (line N; the first sentence when the file is shorter) or ``'random'`` (a random other line). Pairing
is ``training_ext.common.folder_pairs.pair_folder``; images without a caption file, caption files without an image,
empty caption files and caption files that are not UTF-8 are reported with their counts, never silently dropped; an
image that cannot be decoded is skipped and counted (``training_ext.data.skips``).
Sample keys for a teacher cache are ``<image path relative to root, no extension>#<caption line>``.
"""
import logging
import random
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple, Union

from open_clip_train.data import SharedEpoch
from torch.utils.data import Dataset

from training_ext.common.captions import first_sentence
from training_ext.common.folder_lines import CAPTION_LINES, parse_short_line  # noqa: F401  (re-exported)
from training_ext.data.keyed_captions import folder_line_key
from training_ext.common.folder_pairs import read_folder_captions
from training_ext.data.skips import SkipLog, decode_image


@dataclass
class FolderItem:
    image: str
    captions: List[str]


def read_folder(root: str, progress: bool = False) -> Tuple[str, List[FolderItem]]:
    """(absolute root, items with at least one caption); orphans, empty and undecodable caption files are logged
    with their counts. Raises ValueError when no image has a caption."""
    found = read_folder_captions(root, progress=progress)
    found.report()
    items = [FolderItem(image, captions) for image, _, captions in found.items]
    if not items:
        raise ValueError(f"{found.root}: no image with a caption file (x.jpg needs an x.txt with a caption)")
    logging.info(f"{found.root}: {len(items)} image/caption pairs")
    return found.root, items


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
        self.skips = SkipLog()  # the loader shares its own log here

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

    def __getitem__(self, index):
        """``(long_ids,)`` or ``(image, long_ids, short_ids)``; None when the image cannot be decoded (skipped and
        counted in ``self.skips``; the loader's collate drops it)."""
        long_ids = self.tokenize([self.caption(index)])[0]
        if self.transform is None:
            return (long_ids,)
        pixels = decode_image(self.items[index].image, self.transform, self.skips,
                              f"{self.root}: image {self.items[index].image}")
        if pixels is None:
            return None
        return pixels, long_ids, self.tokenize([self.short_caption(index)])[0]
