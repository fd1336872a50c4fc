"""Samples that training leaves out, counted by reason across DataLoader worker processes.

The policy is the same for every training source (CSV, webdataset, folder): a sample whose caption is missing,
empty or blank, or not UTF-8, and a sample whose image cannot be decoded, is skipped; the first few of each reason
are named in the log as they happen, and the counts are logged with the training progress and at every epoch end.
What cannot be a per-sample skip stops the run instead (see README, "Error handling").
"""
import logging
import multiprocessing
from typing import Callable, Dict, Optional, Tuple

from PIL import Image

from training_ext.common.captions import clean_caption
from training_ext.common.text_files import TextDecodeError, decode_text

SHOWN = 3  # samples named in the log per reason; the rest are only counted

MISSING_CAPTION = "no caption"
EMPTY_CAPTION = "empty caption"
UNDECODABLE_CAPTION = "caption not UTF-8"
NO_IMAGE = "no image"
CORRUPT_IMAGE = "image cannot be decoded"
REASONS = (MISSING_CAPTION, EMPTY_CAPTION, UNDECODABLE_CAPTION, NO_IMAGE, CORRUPT_IMAGE)

# What a bad image raises: missing file, not an image, truncated data, decompression bomb.
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


class SkipLog:
    """Shared counters (one per reason) that DataLoader workers forked from the training process update."""

    def __init__(self):
        self._counts = {reason: multiprocessing.Value("q", 0) for reason in REASONS}

    def skip(self, reason: str, what: str, detail: str = "") -> None:
        """Count one skipped sample; ``what`` names it (file and row, shard and key), shown for the first few."""
        counter = self._counts[reason]
        with counter.get_lock():
            counter.value += 1
            number = counter.value
        if number <= SHOWN:
            logging.warning(f"skipping {what}: {reason}{f' ({detail})' if detail else ''}"
                            + (" (further ones are only counted)" if number == SHOWN else ""))

    def counts(self) -> Dict[str, int]:
        return {reason: counter.value for reason, counter in self._counts.items() if counter.value}

    def get(self) -> int:
        """All samples skipped so far."""
        return sum(self.counts().values())

    def summary(self) -> str:
        return ", ".join(f"{reason}: {count}" for reason, count in self.counts().items())


def decode_image(source, transform: Callable, skips: SkipLog, what: str) -> Optional[object]:
    """``transform`` of the RGB image at ``source`` (a path or a binary stream); None when it cannot be read, which
    is counted in ``skips`` under ``what``. PIL decodes lazily, so a truncated file fails inside ``transform``:
    both are covered."""
    try:
        with Image.open(source) as image:
            return transform(image.convert("RGB"))
    except IMAGE_ERRORS as error:
        skips.skip(NO_IMAGE if isinstance(error, FileNotFoundError) else CORRUPT_IMAGE, what, str(error))
        return None


def checked_caption(value, where: str) -> Tuple[str, Optional[str], str]:
    """(cleaned caption, None, "") for a usable caption, else ("", skip reason, detail): the one caption rule of
    every training source. ``value`` is text (a CSV field, a caption line) or the bytes of a shard member (decoded
    as UTF-8; ``where`` names the member in the detail); None means the sample has no caption."""
    if value is None:
        return "", MISSING_CAPTION, ""
    if isinstance(value, bytes):
        try:
            value = decode_text(value, where)
        except TextDecodeError as error:
            return "", UNDECODABLE_CAPTION, str(error)
    caption = clean_caption(value)
    if not caption:
        return "", EMPTY_CAPTION, ""
    return caption, None, ""
