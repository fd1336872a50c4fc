"""Token ids as each tower's own tokenizer writes them, and the pooled row a text tower reads.

Nothing here assumes a vocabulary: the special ids come from the open_clip tokenizer object (``SimpleTokenizer``:
``sot_token_id`` / ``eot_token_id``, padding 0; ``HFTokenizer``: the transformers tokenizer it wraps) and the
pooling rule from the tower (``pool_type``, ``eos_id``). CLIP's ids (49406 / 49407) are one case among others:
MetaCLIP 2 worldwide ends a caption with ``</s>`` (XLM-V: id 2; mT5: id 1), and 49407 is an ordinary word piece
there.
"""
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

# Any text works as the probe: the special ids are the ids around its own (see _hf_layout).
_PROBE = "a"
END_POOLING = ("argmax", "eos")  # pooling at an end token; "last" reads the last column, which trimming moves


@dataclass(frozen=True)
class TokenLayout:
    """The special ids an open_clip tokenizer writes around a caption's own tokens.

    prefix / suffix: ids before / after the caption's tokens (CLIP: (49406,) / (49407,); XLM-V: (0,) / (2,);
    mT5: () / (1,)); pad: the id written after the suffix up to the context length; cut_keeps_end: a caption
    longer than the context keeps its first ``context - 1`` ids and gets ``end`` last (true of CLIP's tokenizer and
    of transformers' right-side truncation with a one-token suffix), so its view at a shorter context can be cut
    from its ids at a longer one (``truncate_tokens``).
    """
    prefix: Tuple[int, ...]
    suffix: Tuple[int, ...]
    pad: int
    cut_keeps_end: bool

    @property
    def end(self) -> Optional[int]:
        """The id that closes every caption (None when the tokenizer appends nothing)."""
        return self.suffix[-1] if self.suffix else None

    @property
    def specials(self) -> int:
        """How many ids of an untruncated caption are the tokenizer's, not the caption's."""
        return len(self.prefix) + len(self.suffix)


def _is_simple(tokenizer) -> bool:
    return isinstance(tokenizer, SimpleTokenizer)


def _hf_inner(tokenizer):
    """The transformers tokenizer of an open_clip ``HFTokenizer`` in its standard mode; TypeError for any other
    tokenizer (its special ids cannot be read)."""
    if not isinstance(tokenizer, HFTokenizer):
        raise TypeError(f"{type(tokenizer).__name__} is neither open_clip's SimpleTokenizer nor its HFTokenizer: "
                        f"its special token ids are unknown")
    if tokenizer.tokenizer_mode:
        raise TypeError(f"HFTokenizer with tokenizer_mode={tokenizer.tokenizer_mode!r}: only the standard mode's "
                        f"special ids can be read")
    return tokenizer.tokenizer


def _strip_sep(tokenizer, ids: Sequence[int]) -> List[int]:
    """``ids`` as HFTokenizer returns them: with ``strip_sep_token`` every separator id becomes 0."""
    if not tokenizer.strip_sep_token:
        return list(ids)
    return [0 if i == tokenizer.tokenizer.sep_token_id else i for i in ids]


def _hf_layout(tokenizer) -> TokenLayout:
    inner = _hf_inner(tokenizer)
    full = inner(_PROBE)["input_ids"]
    own = inner(_PROBE, add_special_tokens=False)["input_ids"]
    start = next((k for k in range(len(full) - len(own) + 1) if full[k:k + len(own)] == own), None)
    if start is None:
        raise TypeError(f"{inner.name_or_path}: the special tokens do not sit around the caption's own ids")
    prefix = tuple(_strip_sep(tokenizer, full[:start]))
    suffix = tuple(_strip_sep(tokenizer, full[start + len(own):]))
    cut_keeps_end = (len(suffix) == 1 and not tokenizer.strip_sep_token and inner.truncation_side == "right"
                     and inner.padding_side == "right")
    return TokenLayout(prefix, suffix, inner.pad_token_id, cut_keeps_end)


def token_layout(tokenizer) -> TokenLayout:
    """The special ids of an open_clip ``SimpleTokenizer`` or ``HFTokenizer`` (standard mode).

    Raises TypeError for another tokenizer (or HFTokenizer's ``clips`` mode): its ids are not known.
    """
    if _is_simple(tokenizer):
        return TokenLayout((tokenizer.sot_token_id,), (tokenizer.eot_token_id,), 0,
                           cut_keeps_end=tokenizer.reduction_fn is None)
    return _hf_layout(tokenizer)


def caption_ids(tokenizer, captions: Sequence[str]) -> List[List[int]]:
    """Each caption's ids as ``tokenizer`` writes them before cutting and padding: special ids included, however
    long (its length is the caption's token count). Raises TypeError as ``token_layout`` does."""
    if _is_simple(tokenizer):
        return [[tokenizer.sot_token_id] + tokenizer.encode(text) + [tokenizer.eot_token_id] for text in captions]
    ids = _hf_inner(tokenizer)([tokenizer.clean_fn(text) for text in captions], verbose=False)["input_ids"]
    return [_strip_sep(tokenizer, row) for row in ids]


def special_ids(tokenizer) -> Tuple[int, ...]:
    """The ids of ``tokenizer``'s special tokens that stand for no text: its start, end, separator, padding and
    any added special token (SimpleTokenizer: ``all_special_ids``; HFTokenizer: the transformers tokenizer's
    special ids and the ids around a caption). The unknown token is not among them: it stands for text the
    vocabulary lacks. Raises TypeError as ``token_layout`` does."""
    layout = token_layout(tokenizer)
    if _is_simple(tokenizer):
        own = tokenizer.all_special_ids
    else:
        inner = _hf_inner(tokenizer)
        own = [i for i in inner.all_special_ids if i != inner.unk_token_id]
    return tuple(sorted(set(own) | set(layout.prefix) | set(layout.suffix)))


def special_texts(tokenizer) -> Tuple[str, ...]:
    """The text of each id of ``special_ids``: what a caption may spell out to get that id (CLIP:
    '<start_of_text>', '<end_of_text>'; XLM-V: '<s>', '</s>', '<pad>'). Raises TypeError as ``token_layout``."""
    if _is_simple(tokenizer):
        return tuple(tokenizer.decoder[i] for i in special_ids(tokenizer))
    inner = _hf_inner(tokenizer)
    return tuple(text for text in inner.convert_ids_to_tokens(list(special_ids(tokenizer))) if text)


def captions_without_text(tokenizer, captions: Sequence[str]) -> List[bool]:
    """For each caption, True when every id ``tokenizer`` writes between its prefix and the first end id is a
    special id (``special_ids``): nothing of the caption's own is there.

    A text tower pools at the first end id ('argmax' and 'eos' pooling), so such a caption reads as the empty
    caption: a byte-order mark or control characters alone (dropped by open_clip's cleaning), the text
    '<end_of_text>' (CLIP) or '</s>' (XLM-V), or that text before the caption. No vocabulary is assumed: the
    ids come from the tokenizer object. Raises TypeError as ``token_layout`` does."""
    layout = token_layout(tokenizer)
    specials = set(special_ids(tokenizer))
    found = []
    for ids in caption_ids(tokenizer, captions):
        body = ids[len(layout.prefix):]
        if layout.end is not None and layout.end in body:
            body = body[:body.index(layout.end)]
        found.append(all(i in specials for i in body))
    return found


def decode_ids(tokenizer, ids: Sequence[int]) -> str:
    """The text of a caption's own ids (no special ids) as ``tokenizer`` decodes them (SimpleTokenizer: lower
    case, a space after each word)."""
    if _is_simple(tokenizer):
        return tokenizer.decode(list(ids))
    return _hf_inner(tokenizer).decode(list(ids), skip_special_tokens=True)


def same_tokenizer(a, b) -> bool:
    """True when ``a`` and ``b`` write the same ids for every caption at equal context lengths (same class,
    vocabulary, merges or model, cleaning and special ids); False when that cannot be told."""
    if _is_simple(a) and _is_simple(b):
        return (a.reduction_fn is None and b.reduction_fn is None and a.clean_fn is b.clean_fn
                and a.encoder == b.encoder and a.bpe_ranks == b.bpe_ranks)
    try:
        inner_a, inner_b = _hf_inner(a), _hf_inner(b)
    except TypeError:
        return False
    backend_a, backend_b = getattr(inner_a, "backend_tokenizer", None), getattr(inner_b, "backend_tokenizer", None)
    if backend_a is None or backend_b is None:
        return False  # no serialised pipeline to compare: take them as different
    return (a.clean_fn is b.clean_fn and a.strip_sep_token == b.strip_sep_token
            and type(inner_a) is type(inner_b) and token_layout(a) == token_layout(b)
            and backend_a.to_str() == backend_b.to_str())


def truncate_tokens(ids: torch.Tensor, context_length: int, end_id: int) -> torch.Tensor:
    """(B, L) int64 ids cut to (B, min(L, context_length)) the way a tokenizer whose layout has ``cut_keeps_end``
    cuts a caption: a row that does not end inside the first ``context_length`` ids keeps its first
    ``context_length - 1`` and gets ``end_id`` last. With ``end_id`` that tokenizer's end id and ``ids`` its own
    output at a longer context, the result equals its output at ``context_length``.
    """
    if ids.shape[-1] <= context_length:
        return ids
    short = ids[..., :context_length].clone()
    ended_inside = (short == end_id).any(dim=-1)
    short[..., -1] = torch.where(ended_inside, short[..., -1], torch.full_like(short[..., -1], end_id))
    return short


# ---------------------------------------------------------------------------------------------------- pooling

def text_pooling(model) -> Tuple[Optional[str], Optional[int]]:
    """(pool_type, eos_id) of a CLIP's text tower, or of a tower itself; (None, None) for a tower without
    open_clip's pooling settings (a transformers text encoder, say)."""
    tower = getattr(model, "text", model)
    if hasattr(tower, "pool_type"):
        return tower.pool_type, getattr(tower, "eos_id", None)
    return getattr(model, "text_pool_type", None), getattr(model, "text_eos_id", None)


def pooled_positions(ids: torch.Tensor, pool_type: str, eos_id: Optional[int] = None) -> torch.Tensor:
    """(B,) int64: the row of (B, L) ids a tower pooling by ``pool_type`` reads, as
    ``open_clip.transformer.text_global_pool`` picks it: 'argmax' the first largest id, 'eos' the first
    ``eos_id`` (position 0 in a row without one). ValueError for another pool_type."""
    if pool_type == "argmax":
        return ids.argmax(dim=-1)
    if pool_type == "eos":
        return (ids == eos_id).int().argmax(dim=-1)
    raise ValueError(f"pool_type {pool_type!r} does not pool at an end token")


def trims_padding_exactly(model) -> bool:
    """True when dropping the columns after the batch's last pooled row leaves ``model``'s text features unchanged
    (up to rounding): the tower accepts input shorter than its context (no absolute position table), attends
    causally, returns no token outputs, and pools at an end token ('argmax', or 'eos' with its ``eos_id`` set).
    A bidirectional tower (``no_causal_mask``: SigLIP, SigLIP 2, CLIPA, MobileCLIP-S bases and their variants) is
    never trimmed: every token attends to the padding after it, so the padding is part of the input.

    ``model`` is a CLIP / CustomTextCLIP or a text tower. The one rule the training stages and evaluation share.
    """
    tower = getattr(model, "text", model)
    pool_type, eos_id = text_pooling(model)
    if pool_type not in END_POOLING or (pool_type == "eos" and eos_id is None):
        return False
    has_table = getattr(tower, "positional_embedding", None) is not None or \
        getattr(model, "positional_embedding", None) is not None
    # open_clip's towers keep their causal mask as ``attn_mask``; this package's state it as ``causal``
    causal = getattr(tower, "causal", getattr(tower, "attn_mask", None) is not None)
    return (hasattr(tower, "token_embedding") and not has_table and bool(causal)
            and not getattr(tower, "output_tokens", False))


def trim_padding(ids: torch.Tensor, model) -> torch.Tensor:
    """(B, L) int64 ids -> (B, L'): the columns up to the batch's last pooled row, L' = 1 + the largest
    ``pooled_positions`` over the rows (the end token of each caption, found by ``model``'s own rule and end id).

    No token up to a row's pooled one attends to a later one (causal), and RoPE/CoPE positions count from the
    start, so the features are those of the padded batch. It pays when captions are shorter than the context (a
    batch sorted by length, short captions). One host sync (``.item()``) per call. Raises ValueError when
    ``trims_padding_exactly(model)`` is False (open_clip's own towers refuse input shorter than their context;
    'last' pooling reads the last column).
    """
    if not trims_padding_exactly(model):
        raise ValueError("trimming padding would change this text tower's features (it needs causal attention, "
                         "'argmax' or 'eos' pooling with an eos_id, and no absolute position table)")
    if not len(ids):
        return ids
    pool_type, eos_id = text_pooling(model)
    return ids[:, :int(pooled_positions(ids, pool_type, eos_id).max().item()) + 1]
