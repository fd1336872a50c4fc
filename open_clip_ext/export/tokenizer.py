"""A transformers ``CLIPTokenizer`` built from open_clip's own BPE file (nothing is downloaded).

open_clip's ``SimpleTokenizer`` reads ``open_clip/bpe_simple_vocab_16e6.txt.gz``; its vocabulary (token -> id) and
merge ranks are written out as transformers' ``vocab.json`` / ``merges.txt`` (the format of
openai/clip-vit-large-patch14), plus ``tokenizer.json`` for the fast backend. open_clip calls its special tokens
``<start_of_text>`` / ``<end_of_text>``; transformers' CLIP files call them ``<|startoftext|>`` / ``<|endoftext|>``
(same ids, 49406 / 49407).

Where the two tokenizers differ (measured in tests/open_clip_ext/export/test_tokenizer.py):
- text cleaning: open_clip runs ``ftfy.fix_text`` and ``html.unescape`` first (curly quotes become straight ones,
  ligatures are split, ``&amp;`` becomes ``&``, full-width letters become ASCII); transformers only applies NFC,
  whitespace collapsing and lower-casing. ``clean_caption`` is open_clip's cleaning, to call before the tokenizer;
- padding: open_clip pads with id 0; the exported tokenizer pads with ``<|endoftext|>`` (49407), as OpenAI's
  tokenizer on the Hub does. Making ``"!"`` (id 0) the pad token would also turn every ``!`` in a caption into the
  pad id (transformers matches special tokens in the text), so padding is fixed afterwards instead
  (``open_clip_input_ids``). Pooled features do not depend on it (attention is causal and pooling stops at the
  first end-of-text), only the hidden states at padded positions do;
- truncation: identical. ``truncation=True, max_length=N`` keeps ``<|startoftext|>``, the first N - 2 tokens and
  ``<|endoftext|>`` last, which is what open_clip does when it cuts a caption to N tokens.
"""
import functools
import json
import tempfile
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import torch
from open_clip.tokenizer import SimpleTokenizer, get_clean_fn

OPEN_CLIP_SPECIALS = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
EOT = "<|endoftext|>"
OPEN_CLIP_PAD_ID = 0
MERGES_HEADER = "#version: 0.2"


@functools.lru_cache(maxsize=1)
def open_clip_vocabulary() -> Tuple[Dict[str, int], List[Tuple[str, str]]]:
    """(vocab, merges) of open_clip's BPE tokenizer with transformers' names for the special tokens.

    vocab: 49408 entries token -> id; merges: 48894 pairs in rank order (earlier merges first). Cached (reading
    the BPE file takes a while); do not modify the returned objects.
    """
    simple = SimpleTokenizer()
    vocab = {OPEN_CLIP_SPECIALS.get(token, token): index for token, index in simple.encoder.items()}
    merges = sorted(simple.bpe_ranks, key=simple.bpe_ranks.__getitem__)
    return vocab, merges


def clip_tokenizer(context_length: int, pad_token: str = EOT):
    """A fast transformers CLIP tokenizer with open_clip's vocabulary and ``model_max_length=context_length``.

    pad_token: ``"<|endoftext|>"`` (default, as OpenAI's CLIP tokenizer) or ``"!"`` (id 0, as SDXL's second
    tokenizer; note that it then also replaces every literal ``!`` of a caption by the pad id).
    Built from vocab.json / merges.txt written to a temporary folder: the one constructor transformers 4 and 5
    share (their ``__init__`` arguments differ).
    """
    from transformers import CLIPTokenizerFast  # transformers 5: an alias of CLIPTokenizer

    with tempfile.TemporaryDirectory() as folder:
        write_vocab_files(folder)
        return CLIPTokenizerFast.from_pretrained(folder, pad_token=pad_token, model_max_length=context_length)


def write_vocab_files(directory) -> List[str]:
    """vocab.json and merges.txt in ``directory``: transformers' ``save_pretrained`` writes only tokenizer.json,
    which tokenizers older than it (slow ``CLIPTokenizer`` of transformers 4.x) do not read."""
    directory = Path(directory)
    vocab, merges = open_clip_vocabulary()
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (directory / "merges.txt").write_text("\n".join([MERGES_HEADER] + [" ".join(m) for m in merges]) + "\n",
                                          encoding="utf-8")
    return [str(directory / "vocab.json"), str(directory / "merges.txt")]


def clean_caption(text: str) -> str:
    """open_clip's cleaning (``ftfy.fix_text``, HTML unescaping, whitespace collapsing, lower case): the function
    its ``SimpleTokenizer`` applies by default (``clean='lower'``)."""
    return get_clean_fn("lower")(text)


def open_clip_input_ids(tokenizer, texts: Sequence[str], context_length: int = None) -> torch.Tensor:
    """(batch, context_length) int64 ids equal to ``open_clip.get_tokenizer(...)(texts, context_length)``, made
    with a transformers CLIP tokenizer: open_clip's cleaning, truncation keeping end-of-text last, padding with 0."""
    if isinstance(texts, str):
        texts = [texts]
    context_length = context_length or tokenizer.model_max_length
    batch = tokenizer([clean_caption(t) for t in texts], padding="max_length", truncation=True,
                      max_length=context_length, return_tensors="pt")
    return batch["input_ids"].masked_fill(batch["attention_mask"] == 0, OPEN_CLIP_PAD_ID)
