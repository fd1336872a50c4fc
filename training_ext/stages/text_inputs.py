"""The teacher's view of a stage-1 caption: what the teacher's own tokenizer makes of it at the teacher's context.

Stage 1 feeds one batch of captions to two towers. The student reads its own tokenizer's ids; the teacher must read
exactly what its own tokenizer gives at its own context length, special ids and cut included (MetaCLIP 2 ends a
caption with ``</s>``, not CLIP's end id). When both towers share one tokenizer that cuts a long caption by keeping
its first ``context - 1`` ids and writing its end id last, the teacher's ids are cut from the student's; otherwise
each caption is tokenized twice and the batch carries both.
"""
from typing import Callable, List, Tuple, Union

import torch

from open_clip_ext.tokens import same_tokenizer, token_layout, truncate_tokens


class PairedTokenizer:
    """``tokenizer(texts)`` -> (N, Ls + Lt) int64: each caption's ids from ``student`` (Ls = its context length)
    followed by its ids from ``teacher`` (Lt). A tokenizer for the data loaders, which keep one tensor per
    sample; ``TeacherInputs.split`` takes the two apart."""

    def __init__(self, student: Callable, teacher: Callable):
        self.student, self.teacher = student, teacher

    @property
    def parts(self) -> tuple:
        """Both tokenizers: a caption must hold text for each (training_ext.data.skips.TextCheck.of)."""
        return self.student, self.teacher

    def __call__(self, texts: Union[str, List[str]]) -> torch.Tensor:
        return torch.cat([self.student(texts), self.teacher(texts)], dim=1)


class TeacherInputs:
    """Where stage 1's live teacher gets its ids: cut from the student's (``derived``) or tokenized alongside them.

    ``derived`` holds when the two tokenizers write the same ids (``open_clip_ext.tokens.same_tokenizer``), their
    cut keeps the end id (``TokenLayout.cut_keeps_end``) and the student's context is at least the teacher's.
    ``data_tokenizer`` is what the training data must tokenize with; ``split`` turns its batches into the two views.
    """

    def __init__(self, student_tokenizer: Callable, teacher_tokenizer: Callable):
        self.student_length = int(student_tokenizer.context_length)
        self.teacher_length = int(teacher_tokenizer.context_length)
        try:
            layout = token_layout(teacher_tokenizer)
        except TypeError:  # special ids unknown: the teacher's tokenizer runs on every caption, which is exact
            layout = None
        self.end_id = layout.end if layout else None
        self.derived = (layout is not None and layout.cut_keeps_end and self.student_length >= self.teacher_length
                        and same_tokenizer(student_tokenizer, teacher_tokenizer))
        self.data_tokenizer = (student_tokenizer if self.derived
                               else PairedTokenizer(student_tokenizer, teacher_tokenizer))

    def describe(self) -> str:
        if self.derived:
            return (f"the teacher reads the student's ids cut to {self.teacher_length} (one tokenizer, end id "
                    f"{self.end_id} kept last)")
        return f"each caption is tokenized by the student's and by the teacher's tokenizer ({self.teacher_length} ids)"

    def split(self, ids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """A batch of ``data_tokenizer`` ids, int64 -> ((B, Ls) student ids, (B, Lt) teacher ids), both int64.

        Raises ValueError for a paired batch of another width than Ls + Lt.
        """
        if self.derived:
            return ids, truncate_tokens(ids, self.teacher_length, self.end_id)
        if ids.shape[-1] != self.student_length + self.teacher_length:
            raise ValueError(f"expected {self.student_length} + {self.teacher_length} ids per caption (student's, "
                             f"then teacher's), got {ids.shape[-1]}")
        return ids[:, :self.student_length], ids[:, self.student_length:]

