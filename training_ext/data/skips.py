"""Samples that training leaves out, counted by reason across DataLoader worker processes.

The policy is the same for every training source (CSV, webdataset, folder): a sample whose caption is missing,
empty or blank, holds no text once tokenized (``TextCheck``), or is not UTF-8, and a sample whose image cannot be
decoded, is skipped; the first few of each reason are named in the log as they happen, and the counts are logged
with the training progress and at every epoch end. What cannot be a per-sample skip stops the run instead (see
README, "Error handling").
"""
import logging
import multiprocessing
import re
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from open_clip_ext.tokens import caption_ids, captions_without_text, special_texts
from training_ext.common.captions import clean_caption
from training_ext.common.text_files import TextDecodeError, decode_text

SHOWN = 3  # samples named in the log per reason; the rest are only counted

MISSING_CAPTION = "no caption"
EMPTY_CAPTION = "empty caption"
UNDECODABLE_CAPTION = "caption not UTF-8"
NO_IMAGE = "no image"
CORRUPT_IMAGE = "image cannot be decoded"
REASONS = (MISSING_CAPTION, EMPTY_CAPTION, UNDECODABLE_CAPTION, NO_IMAGE, CORRUPT_IMAGE)
BROKEN_SHARD = "shard reads broken off"  # counted apart: a shard, not a sample

# What a bad image raises: missing file, not an image, truncated data, decompression bomb.
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


class SkipLog:
    """Shared counters (one per reason) that DataLoader workers forked from the training process update."""

    def __init__(self):
        self._counts = {reason: multiprocessing.Value("q", 0) for reason in REASONS}
        self._broken_shards = multiprocessing.Value("q", 0)

    def skip(self, reason: str, what: str, detail: str = "") -> None:
        """Count one skipped sample; ``what`` names it (file and row, shard and key), shown for the first few."""
        counter = self._counts[reason]
        with counter.get_lock():
            counter.value += 1
            number = counter.value
        if number <= SHOWN:
            logging.warning(f"skipping {what}: {reason}{f' ({detail})' if detail else ''}"
                            + (" (further ones are only counted)" if number == SHOWN else ""))

    def broken_shard(self, url: str, samples: int, detail: str) -> None:
        """Count one read of a shard that could not be opened, or whose tar stream broke off (cut short, damaged),
        after giving ``samples`` samples; the first few are named. Reading goes on with the next shard."""
        with self._broken_shards.get_lock():
            self._broken_shards.value += 1
            number = self._broken_shards.value
        if number <= SHOWN:
            logging.warning(f"shard {url}: {detail}; it gave {samples} samples before the break, reading goes on "
                            f"with the next shard"
                            + (" (further broken shard reads are only counted)" if number == SHOWN else ""))

    def broken_shards(self) -> int:
        """Shard reads that broke off so far (a shard read in several epochs or passes counts each time)."""
        return self._broken_shards.value

    def counts(self) -> Dict[str, int]:
        return {reason: counter.value for reason, counter in self._counts.items() if counter.value}

    def get(self) -> int:
        """All samples skipped so far."""
        return sum(self.counts().values())

    def summary(self) -> str:
        """The counts by reason, and the shard reads that broke off; "" when nothing was left out."""
        counts = {**self.counts(), **({BROKEN_SHARD: self.broken_shards()} if self.broken_shards() else {})}
        return ", ".join(f"{reason}: {count}" for reason, count in counts.items())


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


# Which captions TextCheck tokenizes. A caption with a letter or digit outside a special token's text gets at
# least one id of its own from every tokenizer open_clip wraps (byte-level BPE encodes any character; SentencePiece
# and WordPiece give a piece or the unknown token, which is not special), unless open_clip's cleaning removes the
# letter first: it unescapes HTML entities, which start with '&' ('&nbsp;' becomes white space), and ftfy drops
# terminal escape sequences, which start with ESC. So only a caption with no letter or digit, or holding '&', ESC or
# a special token's text (any case: CLIP's tokenizer matches them case-insensitively), can tokenize to no text, and
# only those are tokenized for the check: the captions of a ShareGPT4V-size CSV are not all tokenized twice.
_CLEANING_MARKS = ("&", "\x1b")


class TextCheck:
    """The empty-caption rule applied to what the tokenizers that read a caption make of it: a caption holds no
    text when one of them writes nothing but special ids before its first end id
    (``open_clip_ext.tokens.captions_without_text``: each tokenizer's own ids, no CLIP id assumed).

    ``tokenizers``: open_clip tokenizers (SimpleTokenizer, HFTokenizer). One whose special ids cannot be read is
    left out of the check with a warning (its captions are then checked for white space only). Only the captions
    ``suspect`` names are tokenized (see _CLEANING_MARKS for why the others always hold text)."""

    def __init__(self, tokenizers: Sequence = ()):
        self.tokenizers, texts = [], set()
        for tokenizer in tokenizers:
            try:
                texts.update(text.lower() for text in special_texts(tokenizer))
            except TypeError as error:
                logging.warning(f"captions are checked for white space only, not for text once tokenized: {error}")
                continue
            self.tokenizers.append(tokenizer)
        # one alternation for Python's re and for Arrow's RE2 (both read an escaped punctuation mark literally)
        self.pattern = "(?i)" + "|".join(re.escape(text) for text in sorted(texts) + list(_CLEANING_MARKS))
        self._marks = re.compile(self.pattern)

    @classmethod
    def of(cls, tokenizer) -> "TextCheck":
        """The check for the tokenizer a dataset tokenizes with: each of its ``parts`` when it has them (stage 1's
        paired student + teacher tokenizer), else the tokenizer itself."""
        return cls(getattr(tokenizer, "parts", (tokenizer,)))

    def suspect(self, caption: str) -> bool:
        """Whether ``caption`` could tokenize to no text: no letter or digit, or a mark of _CLEANING_MARKS or a
        special token's text in it."""
        return not any(c.isalpha() or c.isnumeric() for c in caption) or bool(self._marks.search(caption))

    def suspect_rows(self, column) -> np.ndarray:
        """(N,) bool: ``suspect`` of every value of an Arrow string column, computed by Arrow (RE2) without a
        Python object per row."""
        import pyarrow.compute as pc
        if not self.tokenizers:
            return np.zeros(len(column), dtype=bool)
        lettered = pc.match_substring_regex(column, r"[\pL\pN]").to_numpy(zero_copy_only=False)
        marked = pc.match_substring_regex(column, self.pattern).to_numpy(zero_copy_only=False)
        return ~lettered.astype(bool) | marked.astype(bool)

    def why_empty(self, caption: str) -> Optional[str]:
        """None when the cleaned ``caption`` holds text for every tokenizer, else the detail for the skip log
        (the ids the first tokenizer that finds none writes)."""
        if not self.tokenizers or not self.suspect(caption):
            return None
        for tokenizer in self.tokenizers:
            if captions_without_text(tokenizer, [caption])[0]:
                return f"no text once tokenized: ids {caption_ids(tokenizer, [caption])[0][:8]}"
        return None

    def holds_text(self, caption: str) -> bool:
        return self.why_empty(caption) is None


def checked_caption(value, where: str, text_check: Optional[TextCheck] = None) -> Tuple[str, Optional[str], str]:
    """(cleaned caption, None, "") for a usable caption, else ("", skip reason, detail): the one caption rule of
    every training source. ``value`` is text (a CSV field, a caption line) or the bytes of a shard member (decoded
    as UTF-8; ``where`` names the member in the detail); None means the sample has no caption. With
    ``text_check``, a caption that holds no text once tokenized is an empty caption too."""
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
    detail = text_check.why_empty(caption) if text_check is not None else None
    if detail:
        return "", EMPTY_CAPTION, detail
    return caption, None, ""
