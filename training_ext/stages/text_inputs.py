"""Token ids as the towers read them: the teacher's 77-token view and padding-free student batches."""
import torch

from open_clip_ext import EOT_TOKEN_ID, truncate_tokens


def text_context_length(model) -> int:
    """Context length of a CLIP / CustomTextCLIP model (both expose it as ``context_length``)."""
    return int(model.context_length)


def teacher_ids(student_ids: torch.Tensor, teacher_context: int) -> torch.Tensor:
    """The teacher's input derived from the student's 248-token ids (first tokens, EOT kept last)."""
    return truncate_tokens(student_ids, teacher_context)


def text_tower_has_relative_positions(model) -> bool:
    """True when the text tower has no absolute positional table, so it accepts inputs shorter than its context.

    Stock open_clip towers add a fixed-length positional embedding and need full-length inputs.
    """
    tower = getattr(model, "text", model)
    return getattr(tower, "positional_embedding", None) is None


def trim_padding(ids: torch.Tensor) -> torch.Tensor:
    """Drop the padding columns after the last EOT of the batch.

    With causal attention and EOT pooling nothing after EOT reaches the pooled feature, so a relative-position
    tower gives identical features on the trimmed batch, at a fraction of the cost when captions are shorter
    than the context (every short caption, most long ones).
    """
    eot_positions = (ids == EOT_TOKEN_ID).int().argmax(dim=-1)
    has_eot = (ids == EOT_TOKEN_ID).any(dim=-1)
    if not bool(has_eot.all()):
        return ids  # a row without EOT: cannot tell where it ends, keep everything
    return ids[:, : int(eot_positions.max()) + 1]
