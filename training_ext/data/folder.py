"""Folder datasets (train-CLIP style) for both stages: ``x.jpg`` pairs with ``x.txt`` anywhere under the root.

A caption file holds one caption a line. Which line a sample reads:
- ``caption_line='random'`` (default): a line drawn afresh every epoch (deterministic in seed, epoch, image);
- ``caption_line='first'``: always the first line, the long caption.
The short caption (stage 2) is ``short_line='first-sentence'`` (the caption's first sentence, TULIP's rule), an
integer N (line N; the first sentence when the file is shorter) or ``'random'`` (a random other line). Pairing
is ``training_ext.common.folder_pairs.pair_folder``; images without a caption file, caption files without an image,
empty caption files, caption files that are not UTF-8 and caption files none of whose lines holds text once
tokenized (``training_ext.data.skips.TextCheck``) are reported with their counts, never silently dropped; a line
without text is never read (nor drawn); an image that cannot be decoded is skipped and counted
(``training_ext.data.skips``).
Sample keys for a teacher cache are ``<image path relative to root, no extension>#<caption line>``, the line
counted over the file's non-empty lines (a line without text keeps the numbers of the others unchanged).
"""
import logging
import random
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple, Union

from open_clip_train.data import SharedEpoch
from torch.utils.data import Dataset

from training_ext.common.captions import short_caption_for
from training_ext.common.folder_lines import CAPTION_LINES, parse_short_line  # noqa: F401  (re-exported)
from training_ext.data.keyed_captions import folder_line_key
from training_ext.common.folder_pairs import read_folder_captions
from training_ext.data.skips import SkipLog, TextCheck, decode_image


@dataclass
class FolderItem:
    image: str
    captions: List[str]  # the caption file's non-empty lines, cleaned
    lines: List[int]     # the numbers of those that hold text once tokenized: the lines a sample reads


def read_folder(root: str, progress: bool = False,
                text_check: Optional[TextCheck] = None) -> Tuple[str, List[FolderItem]]:
    """(absolute root, items with at least one caption that holds text); orphans, empty and undecodable caption
    files, and with ``text_check`` files and lines without text once tokenized, are logged with their counts.
    Raises ValueError when no image has a caption."""
    found = read_folder_captions(root, progress=progress,
                                 holds_text=text_check.holds_text if text_check is not None else None)
    found.report()
    items = [FolderItem(image, captions, lines) for image, _, captions, lines in found.items]
    if not items:
        raise ValueError(f"{found.root}: no image with a caption file (x.jpg needs an x.txt with a caption)")
    logging.info(f"{found.root}: {len(items)} image/caption pairs")
    return found.root, items


class FolderDataset(Dataset):
    """Stage 1: ``(long_ids,)``; with a transform (stage 2 or validation): ``(image, long_ids, short_ids)``.

    ``shared_epoch`` is the DataInfo's: DataInfo.set_epoch reaches the dataloader workers through it, so a
    random caption line changes every epoch and a resumed run draws the same lines again. ``text_check`` (default
    ``TextCheck.of(tokenizer)``) decides which lines hold text; ``skips`` counts undecodable images.
    """

    def __init__(self, root: str, tokenizer: Callable, transform: Optional[Callable] = None,
                 caption_line: str = "random", short_line: Union[str, int] = "first-sentence", seed: int = 0,
                 progress: bool = False, text_check: Optional[TextCheck] = None, skips: Optional[SkipLog] = None):
        if caption_line not in CAPTION_LINES:
            raise ValueError(f"caption line must be one of {CAPTION_LINES}, got {caption_line!r}")
        self.text_check = text_check or TextCheck.of(tokenizer)
        self.root, self.items = read_folder(root, progress, self.text_check)
        self.tokenize = tokenizer
        self.transform = transform
        self.caption_line = caption_line
        self.short_line = short_line
        self.seed = seed
        self.shared_epoch = SharedEpoch(0)
        self.skips = skips or SkipLog()

    def __len__(self):
        return len(self.items)

    def _rng(self, index: int, purpose: int) -> random.Random:
        return random.Random(hash((self.seed, self.shared_epoch.get_value(), index, purpose)))

    def line_of(self, index: int) -> int:
        """The caption line sample ``index`` reads this epoch: the first line with text, or one drawn among them."""
        lines = self.items[index].lines
        return lines[0] if self.caption_line == "first" or len(lines) == 1 else \
            lines[self._rng(index, 0).randrange(len(lines))]

    def key(self, index: int) -> str:
        return folder_line_key(self.root, self.items[index].image, self.line_of(index))

    def caption(self, index: int) -> str:
        return self.items[index].captions[self.line_of(index)]

    def short_caption(self, index: int) -> str:
        """Line ``short_line``, a random other line or the first sentence of the line read (a line without text is
        never taken; a first sentence without text gives way to the whole line)."""
        item, line = self.items[index], self.line_of(index)
        if isinstance(self.short_line, int) and self.short_line in item.lines:
            return item.captions[self.short_line]
        if self.short_line == "random" and len(item.lines) > 1:
            others = [n for n in item.lines if n != line]
            return item.captions[self._rng(index, 1).choice(others)]
        return short_caption_for(item.captions[line], holds_text=self.text_check.holds_text)

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
