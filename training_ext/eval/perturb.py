"""Caption-perturbation diagnostics (`--perturb`): how much of a model's long-caption retrieval rests on which
part of the caption.

- ``first-sentence-removed``: the caption without its first sentence (a one-sentence caption becomes empty);
- ``shuffled-sentences``: the caption's sentences in a random order (one random.Random(seed) for the run,
  drawn caption by caption in benchmark order, so a run is repeatable);
- ``cut-N`` (e.g. ``cut-77``): the caption cut to its first N open_clip tokens, start and end tokens included,
  i.e. what a stock N-token CLIP sees: the first N - 2 BPE tokens decoded back to text (lower case, as the
  tokenizer reads it). A caption that already fits is left exactly as it is.

Sentences are split the way training_ext.common.captions.first_sentence finds the first one (at . ! ? before
white space, abbreviations such as "e.g." and decimals excepted). Each perturbation is reported as the change in
R@1 against the intact captions, same images, same model. Only long-caption benchmarks are perturbed.
"""
import random
from typing import List, Sequence

from training_ext.common.captions import clean_caption, first_sentence

NAMES = ("first-sentence-removed", "shuffled-sentences")
CUT_PREFIX = "cut-"
SPECIAL_TOKENS = 2


def parse_perturbations(text: str) -> List[str]:
    """'first-sentence-removed,cut-77' -> the list of names; ValueError for an unknown one."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    for name in names:
        if name in NAMES:
            continue
        if name.startswith(CUT_PREFIX) and name[len(CUT_PREFIX):].isdigit() \
                and int(name[len(CUT_PREFIX):]) > SPECIAL_TOKENS:
            continue
        raise ValueError(f"unknown caption perturbation {name!r}: use {', '.join(NAMES)} or cut-N (N > 2)")
    if len(set(names)) != len(names):
        raise ValueError(f"a perturbation is named twice in {text!r}")
    return names


def split_sentences(caption: str) -> List[str]:
    """The caption's sentences, in order (white space collapsed)."""
    rest, sentences = clean_caption(caption), []
    while rest:
        sentence = first_sentence(rest)
        sentences.append(sentence)
        rest = rest[len(sentence):].strip()
    return sentences


def _cut(caption: str, tokens: int) -> str:
    from training_ext.eval.length_buckets import count_tokenizer  # deferred: open_clip
    tokenizer = count_tokenizer()
    ids = tokenizer.encode(caption)
    if len(ids) + SPECIAL_TOKENS <= tokens:
        return caption
    return tokenizer.decode(ids[:tokens - SPECIAL_TOKENS]).strip()


def perturb_captions(captions: Sequence[str], name: str, seed: int = 0) -> List[str]:
    """The perturbed copy of every caption."""
    parse_perturbations(name)
    if name == "first-sentence-removed":
        return [" ".join(split_sentences(caption)[1:]) for caption in captions]
    if name == "shuffled-sentences":
        rng = random.Random(seed)
        shuffled = []
        for caption in captions:
            sentences = split_sentences(caption)
            rng.shuffle(sentences)
            shuffled.append(" ".join(sentences))
        return shuffled
    tokens = int(name[len(CUT_PREFIX):])
    return [_cut(caption, tokens) for caption in captions]
