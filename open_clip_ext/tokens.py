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
