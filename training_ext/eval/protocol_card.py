"""The protocol card: exactly what one benchmark number was computed on, and how.

Every result carries one (terminal, results.json, results.md): the protocol, the peer file and commit it follows
and whether it was checked against that code, any image transform the peer applies before the model's own
preprocess, image and caption counts (and the full release's, when they differ), the caption normalisation,
blank captions kept and files the protocol skips, what the reader noted (e.g. the caption source), a sha256 over
the ordered (image file, caption) list, how many captions the model's context cuts and by how many tokens on
average (long-caption benchmarks: also how many exceed 248 and 512 tokens), the RoPE position scaling when the
model is read past its trained context, the tie rule with how far exact ties could move each R@1, and the
precision.

The sha256 is machine-independent: each image is named by its path relative to the folder all the benchmark's
images share, and the digest runs over one JSON line ``["<image>", "<caption>"]`` per caption, in order
(for a classification set: ``["<image>", "<class name>"]`` per image).
"""
import hashlib
import json
import os
from typing import Dict, List, Optional, Sequence

from training_ext.eval.datasets import Benchmark, ClassificationSet, RetrievalSet

SKIPPED_NAMES_SHOWN = 10


def image_keys(image_paths: Sequence[str]) -> List[str]:
    """Each path relative to the deepest folder all the images share (a lone image: its file name)."""
    if not image_paths:
        return []
    folders = {os.path.dirname(os.path.abspath(p)) for p in image_paths}
    common = os.path.commonpath(list(folders))
    return [os.path.relpath(os.path.abspath(p), common).replace(os.sep, "/") for p in image_paths]


def pairs_sha256(keys: Sequence[str], texts: Sequence[str], owners: Sequence[int]) -> str:
    """sha256 over one JSON line [keys[owners[i]], texts[i]] per text, in order."""
    digest = hashlib.sha256()
    for text, owner in zip(texts, owners):
        digest.update((json.dumps([keys[owner], text], ensure_ascii=False) + "\n").encode("utf-8"))
    return digest.hexdigest()


def dataset_card(benchmark: Benchmark, data) -> Dict:
    """The model-independent part of the card."""
    keys = image_keys(data.image_paths)
    card = {"protocol": benchmark.protocol_name, "benchmark": benchmark.name, "follows": benchmark.peer,
            "verified": benchmark.verified, "image_transform": benchmark.image_transform_text,
            "notes": list(getattr(data, "notes", [])), "num_images": len(data.image_paths)}
    if isinstance(data, ClassificationSet):
        card.update(num_classes=len(data.classnames), normalisation="class names in the OpenAI templates",
                    blank_captions=0, skipped_files=0, skipped_examples=[],
                    sha256=pairs_sha256(keys, [data.classnames[label] for label in data.labels],
                                        range(len(data.labels))))
        counts = (card["num_images"], card["num_classes"])
    else:
        data: RetrievalSet
        card.update(num_captions=len(data.captions), normalisation=benchmark.normalisation,
                    blank_captions=sum(not caption.strip() for caption in data.captions),
                    skipped_files=len(data.skipped), skipped_examples=list(data.skipped[:SKIPPED_NAMES_SHOWN]),
                    sha256=pairs_sha256(keys, data.captions, data.caption_image))
        counts = (card["num_images"], card["num_captions"])
    card["release_counts"] = list(benchmark.release_counts) if benchmark.release_counts else None
    card["matches_release"] = None if benchmark.release_counts is None else counts == tuple(benchmark.release_counts)
    return card


def context_fields(token_counts: Optional[Sequence[int]], context_length: int) -> Dict:
    """Captions longer than the context (token counts of the model's own tokenizer, its special tokens included)
    and the mean number of tokens the tokenizer cuts from each of them (0 when none is cut)."""
    cut = [count - context_length for count in (token_counts or []) if count > context_length]
    return {"context_length": context_length, "captions_over_context": len(cut),
            "mean_tokens_cut": round(sum(cut) / len(cut), 2) if cut else 0.0}


def length_counts(token_counts: Sequence[int], lengths: Sequence[int]) -> Dict:
    """{'N': how many token counts exceed N} for each N of ``lengths`` (string keys, as JSON keeps them)."""
    return {str(n): sum(count > n for count in token_counts) for n in lengths}


def model_card(dataset: Dict, token_counts: Optional[Sequence[int]], context_length: int, tie_rule: str,
               precision: str, ties: Optional[Dict] = None, position_scaling: Optional[Dict] = None,
               over_lengths: Sequence[int] = ()) -> Dict:
    """ties: {direction: retrieval.tie_report(...)} of the result, or None. position_scaling: the RoPE tower's
    setting when read past its trained context (``RelPosTextTransformer.set_position_scaling``), else None.
    over_lengths: token counts (the model's own tokenizer, untruncated, special tokens included) whose number of
    captions exceeding each the card reports."""
    from training_ext.common.retrieval import TIE_RULES
    card = {**dataset, **context_fields(token_counts, context_length), "position_scaling": position_scaling}
    if over_lengths and token_counts is not None:
        card["captions_over"] = length_counts(token_counts, over_lengths)
    return {**card, "tie_rule": tie_rule, "tie_rule_meaning": TIE_RULES[tie_rule], "ties": ties,
            "precision": precision}


DIRECTION_NAMES = {"image_to_text": "I2T", "text_to_image": "T2I", "image_to_class": "ZS"}


def ties_line(ties: Optional[Dict], k: int = 1) -> str:
    """How far exact ties could move R@k, per direction: 'I2T R@1 37.50 (ties allow up to 41.67: 2 queries)'."""
    if not ties:
        return "not computed"
    parts = []
    for direction, report in ties.items():
        entry = report[f"R@{k}"]
        name = f"{DIRECTION_NAMES.get(direction, direction)} R@{k} {entry['reported']:.2f}"
        if entry["decided_by_ties"]:
            parts.append(f"{name} (ties allow up to {entry['optimistic']:.2f}: {entry['decided_by_ties']} of "
                         f"{report['queries']} queries tied at the decisive rank)")
        else:
            parts.append(f"{name} (no query decided by a tie)")
    return "; ".join(parts)


def _counts_line(card: Dict) -> str:
    second = ("classes", card["num_classes"]) if "num_classes" in card else ("captions", card["num_captions"])
    line = f"{card['num_images']} images, {second[1]} {second[0]}"
    if card.get("release_counts") and not card.get("matches_release"):
        released = card["release_counts"]
        line += f" (the full release has {released[0]} images, {released[1]} {second[0]}: NOT the full set)"
    return line


def format_card(card: Dict, model: str) -> str:
    """The card as indented text lines (terminal and results.md)."""
    skipped = f"{card['skipped_files']}"
    if card["skipped_files"]:
        skipped += f" ({', '.join(card['skipped_examples'])}{', ...' if card['skipped_files'] > len(card['skipped_examples']) else ''})"
    context = f"{card['context_length']} tokens"
    if "num_captions" in card:
        context += (f"; {card['captions_over_context']} captions longer, cut by "
                    f"{card['mean_tokens_cut']} tokens on average")
    lines = [
        f"protocol card: {card['benchmark']} x {model}",
        f"  protocol:       {card['protocol']}, follows {card['follows']}",
        f"  verified:       {card['verified']}",
        f"  image transform: {card['image_transform']}",
        f"  evaluated:      {_counts_line(card)}",
        f"  normalisation:  {card['normalisation']}",
        f"  blank captions: {card['blank_captions']} kept; files the protocol skips: {skipped}",
    ]
    lines += [f"  note:           {note}" for note in card.get("notes", [])]
    lines += [
        f"  sha256:         {card['sha256']}",
        f"  context:        {context}",
    ]
    if card.get("captions_over"):
        lines.append("  long captions:  " + ", ".join(
            f"{count} over {n}" for n, count in card["captions_over"].items())
            + " tokens (the model's tokenizer, untruncated)")
    scaling = card.get("position_scaling")
    if scaling:
        lines.append(f"  positions:      RoPE built at {scaling['trained_length']} tokens, read at "
                     f"{scaling['context_length']} with position scaling {scaling['kind']} (runtime override)")
    lines += [
        f"  tie rule:       {card['tie_rule']} ({card['tie_rule_meaning']})",
        f"  ties:           {ties_line(card.get('ties'))}",
        f"  precision:      {card['precision']}",
    ]
    return "\n".join(lines)
