"""Which caption line a folder-dataset sample reads: the choices of ``--folder-caption-line`` and the parser of
``--folder-short-line``.

They live apart from ``training_ext.data.folder`` (which imports torch and PIL) because the flags are parsed, and
``--help`` printed, before torch is imported.
"""
from typing import Union

CAPTION_LINES = ("random", "first")


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
