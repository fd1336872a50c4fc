"""ShareGPT4V caption json: parsing, and the validation/training split that TULIP and Long-CLIP use.

The file (e.g. `share-captioner_coco_lcs_sam_1246k_1107.json`) is a list of
`{"id", "image": "<path relative to the data root>", "conversations": [{"from": "human", ...},
{"from": "gpt", "value": <long caption>}]}`. The caption is the gpt turn's value (conversations[1] in the
released file) with newlines and runs of white space turned into single spaces. Validation is the first
`num_val` entries by position in the file (1000 in the published protocol, the ShareGPT4V-1k benchmark);
training is everything after them.
"""
from dataclasses import dataclass
from typing import List, Tuple

from training_ext.common.captions import clean_caption
from training_ext.common.text_files import read_json


@dataclass(frozen=True)
class Entry:
    index: int     # position in the json list: the split is by position
    id: str
    image: str     # relative to the ShareGPT4V data root
    caption: str   # cleaned long caption


@dataclass(frozen=True)
class MalformedEntry:
    index: int
    id: str        # "" when the entry has none
    reason: str


def load_json_list(path: str) -> list:
    data = read_json(path)  # ValueError naming the file: not UTF-8 (byte offset) or not JSON (line, column)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of entries, got {type(data).__name__}")
    return data


def _gpt_caption(conversations) -> str:
    """The first gpt turn's text; raises ValueError saying what is wrong."""
    if not isinstance(conversations, list):
        raise ValueError("'conversations' is missing or not a list")
    for turn in conversations:
        if isinstance(turn, dict) and turn.get("from") == "gpt":
            caption = clean_caption(turn.get("value", ""))
            if not caption:
                raise ValueError("the gpt turn's value is empty")
            return caption
    raise ValueError("no gpt turn in 'conversations'")


def parse_entry(index: int, raw) -> Entry:
    """One json entry; raises ValueError (the reason) when it is malformed."""
    if not isinstance(raw, dict):
        raise ValueError(f"entry is a {type(raw).__name__}, not an object")
    image = raw.get("image")
    if not isinstance(image, str) or not image.strip():
        raise ValueError("missing or empty 'image'")
    return Entry(index=index, id=str(raw.get("id", "")), image=image.strip(),
                 caption=_gpt_caption(raw.get("conversations")))


def parse_entries(data: list) -> Tuple[List[Entry], List[MalformedEntry]]:
    """Every well-formed entry, and a report line for each malformed one (kept out of both splits)."""
    entries, malformed = [], []
    for index, raw in enumerate(data):
        try:
            entries.append(parse_entry(index, raw))
        except ValueError as error:
            entry_id = str(raw.get("id", "")) if isinstance(raw, dict) else ""
            malformed.append(MalformedEntry(index=index, id=entry_id, reason=str(error)))
    return entries, malformed


def split_validation(entries: List[Entry], num_val: int) -> Tuple[List[Entry], List[Entry]]:
    """(validation, training): validation is every entry at json position < num_val."""
    if num_val < 0:
        raise ValueError(f"the number of validation entries must be >= 0, got {num_val}")
    return [e for e in entries if e.index < num_val], [e for e in entries if e.index >= num_val]
