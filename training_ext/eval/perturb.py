"""Caption-perturbation diagnostics (`--perturb`): how much of a model's long-caption retrieval rests on which
part of the caption.

- ``first-sentence-removed``: the caption without its first sentence (a one-sentence caption becomes empty);
- ``shuffled-sentences``: the caption's sentences in a random order (one random.Random(seed) for the run,
  drawn caption by caption in benchmark order, so a run is repeatable);
- ``cut-N`` (e.g. ``cut-77``): the caption cut to its first N tokens of the evaluated model's own tokenizer,
  special tokens included, i.e. what an N-token model of that tokenizer sees: the caption's first N - S tokens
  (S the tokenizer's special tokens: CLIP's start and end, 2; mT5's ``</s>``, 1) decoded back to text (CLIP's
  BPE decodes in lower case, as it reads the caption). A caption that already fits is left exactly as it is.

Sentences are split the way training_ext.common.captions.first_sentence finds the first one (at . ! ? before
white space, abbreviations such as "e.g." and decimals excepted). Each perturbation is reported as the change in
R@1 against the intact captions, same images, same model. Only long-caption benchmarks are perturbed.
"""
import random
from typing import Callable, List, Optional, Sequence

from training_ext.common.captions import clean_caption, first_sentence

NAMES = ("first-sentence-removed", "shuffled-sentences")
CUT_PREFIX = "cut-"
SPECIAL_TOKENS = 2  # a cut must keep at least one caption token besides a start and an end token


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


def _cut(captions: Sequence[str], tokens: int, tokenizer: Callable) -> List[str]:
    from open_clip_ext.tokens import caption_ids, decode_ids, token_layout  # deferred: open_clip
    layout = token_layout(tokenizer)
    cut = []
    for caption, ids in zip(captions, caption_ids(tokenizer, captions)):
        if len(ids) <= tokens:
            cut.append(caption)
            continue
        own = ids[len(layout.prefix):len(ids) - len(layout.suffix)]
        cut.append(decode_ids(tokenizer, own[:max(0, tokens - layout.specials)]).strip())
    return cut


def perturb_captions(captions: Sequence[str], name: str, seed: int = 0,
                     tokenizer: Optional[Callable] = None) -> List[str]:
    """The perturbed copy of every caption. ``cut-N`` counts with ``tokenizer`` (the evaluated model's open_clip
    SimpleTokenizer or HFTokenizer); ValueError when it is missing, TypeError when its special ids are unknown."""
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
    if tokenizer is None:
        raise ValueError(f"{name} counts tokens with the evaluated model's tokenizer: pass tokenizer")
    return _cut(captions, int(name[len(CUT_PREFIX):]), tokenizer)
