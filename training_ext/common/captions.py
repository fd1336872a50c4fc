"""Caption helpers shared by data preparation, training and evaluation."""
import re
from typing import Callable, Optional

# A sentence ends at . ! or ? followed by white space; "e.g. " style abbreviations and decimals
# ("3.5") are not sentence ends.
_ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.", "mr.", "mrs.", "dr.", "st.", "no.")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def clean_caption(text: str) -> str:
    """Newlines and runs of white space become single spaces (ShareGPT4V captions hold newlines)."""
    return " ".join(str(text).split())


def short_caption_for(long_caption: str, given_short=None, holds_text: Optional[Callable[[str], bool]] = None) -> str:
    """A given short caption that holds text wins; otherwise the long caption's first sentence when it holds text,
    else the long caption itself (cleaned). ``holds_text(cleaned caption)`` is the training data's empty-caption
    rule (training_ext.data.skips.TextCheck.holds_text); by default a non-empty caption holds text."""
    holds = holds_text or bool
    given = clean_caption(given_short or "")
    if given and holds(given):
        return given
    sentence = first_sentence(long_caption)
    return sentence if holds(sentence) else clean_caption(long_caption)


def first_sentence(text: str) -> str:
    """The first sentence of a caption: TULIP's and Long-CLIP's short caption for a long one.

    ShareGPT4V's long captions open with a one-sentence summary, so the first sentence is a faithful
    short caption. A caption with no sentence end is returned whole.
    """
    text = clean_caption(text)
    for match in _SENTENCE_END.finditer(text):
        candidate = text[: match.start()]
        last_word = candidate.rsplit(" ", 1)[-1].lower()
        if last_word in _ABBREVIATIONS:
            continue
        return candidate
    return text
