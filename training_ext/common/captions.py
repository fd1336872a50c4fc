"""Caption helpers shared by data preparation, training and evaluation."""
import re

# A sentence ends at . ! or ? followed by white space; "e.g. " style abbreviations and decimals
# ("3.5") are not sentence ends.
_ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.", "mr.", "mrs.", "dr.", "st.", "no.")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def clean_caption(text: str) -> str:
    """Newlines and runs of white space become single spaces (ShareGPT4V captions hold newlines)."""
    return " ".join(str(text).split())


def short_caption_for(long_caption: str, given_short=None) -> str:
    """A given (non-empty) short caption wins; otherwise the first sentence of the long caption."""
    return clean_caption(given_short or "") or first_sentence(long_caption)


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
