"""Token-id helpers for feeding one caption batch to towers of different context lengths."""
import torch

EOT_TOKEN_ID = 49407  # open_clip's SimpleTokenizer end-of-text id: also the largest id, which EOT pooling relies on


def truncate_tokens(ids: torch.Tensor, context_length: int = 77, eot_id: int = EOT_TOKEN_ID) -> torch.Tensor:
    """Cut (B, L) token ids to ``context_length`` the way open_clip's tokenizer truncates.

    The tokenizer keeps EOT as the last token of a truncated caption, so a caption that did not end inside
    the first ``context_length`` tokens gets EOT at position ``context_length - 1``. This derives the 77-token
    teacher input from the 248-token student input without tokenizing twice.
    """
    if ids.shape[-1] <= context_length:
        return ids
    short = ids[..., :context_length].clone()
    ended_inside = (short == eot_id).any(dim=-1)
    short[..., -1] = torch.where(ended_inside, short[..., -1], torch.full_like(short[..., -1], eot_id))
    return short


def trim_padding(ids: torch.Tensor, eot_id: int = EOT_TOKEN_ID) -> torch.Tensor:
    """Drop the columns of (B, L) token ids that come after the last EOT of the batch: (B, L) -> (B, L').

    L' = 1 + the largest EOT position over the rows (L for a row without EOT). For the RoPE and CoPE towers
    (causal, pooled at EOT) this leaves the features unchanged up to rounding:
    no position up to a row's EOT attends to a later one, and RoPE/CoPE positions, like learned absolute ones,
    count from the start. It pays when the batch is sorted by caption length (a batch of short captions then
    runs at its own length instead of 248); a shuffled batch of mixed lengths keeps nearly all its columns.
    Not for towers that pool the last column (``pool_type='last'``) or when token outputs are used. open_clip's
    own text towers (3.3) raise on input shorter than their context: their causal mask and, in ``CLIP``, the
    positional table have the full length.
    One host sync (``.item()``) per call.
    """
    has_eot = ids == eot_id
    ends = torch.where(has_eot.any(dim=-1), has_eot.int().argmax(dim=-1), ids.shape[-1] - 1)
    return ids[:, :int(ends.max().item()) + 1]
