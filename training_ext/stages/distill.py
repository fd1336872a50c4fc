"""Stage 1, relative position distillation: student text features follow the frozen teacher's.

Only text runs on this path: the batch is token ids, the teacher reads the first 77 of them, the student all of
them; no image is decoded and no image tower runs. The student's forward is the module DDP wraps, so its
gradients are all-reduced (TULIP's reference called the wrapped model's inner module and never synchronised).
"""
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F
from torch import nn

from open_clip_ext.state_dicts import is_image_side_key
from open_clip_ext.tokens import trim_padding, trims_padding_exactly
from open_clip_train.train import backward

from training_ext.engine.checkpoint import ensure_finite
from training_ext.engine.distributed import no_sync_unless
from training_ext.stages.cached_targets import distillation_output
from training_ext.stages.text_inputs import TeacherInputs


def distillation_losses(student: torch.Tensor, teacher: torch.Tensor, weights: Dict[str, float]) -> Dict[str, torch.Tensor]:
    """Per-term losses between (B, D) projected text features and their weighted sum under 'loss'.

    cosine: 1 - mean cosine similarity; mse: mean squared error over all elements; l2: mean euclidean distance.
    All are means over the batch, so DDP's gradient average equals the gradient of the combined batch.
    """
    student, teacher = student.float(), teacher.float()
    terms = {}
    if "cosine" in weights:
        terms["cosine_loss"] = 1.0 - F.cosine_similarity(student, teacher, dim=-1).mean()
    if "mse" in weights:
        terms["mse_loss"] = F.mse_loss(student, teacher)
    if "l2" in weights:
        terms["l2_loss"] = (student - teacher).norm(dim=-1).mean()
    terms["loss"] = sum(weights[name] * terms[f"{name}_loss"] for name in weights)
    return terms


class StudentTextFeatures(nn.Module):
    """forward(ids) = the student's projected text features; the module that DDP wraps in stage 1.

    It holds the whole student CLIP so checkpoints carry the full model, but the vision tower and logit scale
    are frozen beforehand (``freeze_all_but_text``), so DDP neither syncs nor waits for them.
    """

    def __init__(self, clip_model: nn.Module):
        super().__init__()
        self.clip = clip_model
        self.trim = trims_padding_exactly(clip_model)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        features = self.clip.encode_text(trim_padding(ids, self.clip) if self.trim else ids)
        return distillation_output(self.clip, features)  # to a cached teacher's width, if it differs


def freeze_all_but_text(clip_model: nn.Module) -> None:
    """Stage 1 trains the text side only: vision tower, logit scale and bias stop requiring grad."""
    for name, param in clip_model.named_parameters():
        if is_image_side_key(name):
            param.requires_grad_(False)


class TeacherTextFeatures:
    """The frozen teacher run on its own view of each caption of a batch (``TeacherInputs``)."""

    def __init__(self, teacher: nn.Module, inputs: TeacherInputs):
        self.teacher = teacher.eval().requires_grad_(False)
        self.inputs = inputs

    @torch.no_grad()
    def __call__(self, ids: torch.Tensor):
        """A batch's ids (``inputs.data_tokenizer``'s) -> ((B, Ls) int64 student ids, (B, D) teacher features)."""
        student_ids, teacher_ids = self.inputs.split(ids)
        return student_ids, self.teacher.encode_text(teacher_ids)


def make_distill_step(student: nn.Module, teacher: TeacherTextFeatures, weights: Dict[str, float], device,
                      autocast: Callable, scaler, distributed: bool) -> Callable:
    """The stage-1 step over k micro-batches: each loss is divided by k, which makes the summed gradient the
    gradient of the mean over all k*B samples (the k-times larger batch). A batch ``(ids, target)`` brings its
    teacher target from a cache (``teacher`` may then be None); a batch ``(ids,)`` runs the teacher, which takes
    the student's ids and its own from them (``TeacherInputs.split``)."""

    def step(micro_batches: List[tuple]) -> Dict[str, float]:
        totals: Dict[str, float] = {}
        count = len(micro_batches)
        for index, (ids, *cached) in enumerate(micro_batches):
            ids = ids.to(device=device, non_blocking=True)
            if cached:
                target = cached[0].to(device=device, non_blocking=True)
            else:
                with autocast():
                    ids, target = teacher(ids)
            with no_sync_unless(student, sync=index == count - 1):
                with autocast():
                    features = student(ids)
                losses = distillation_losses(features, target, weights)
                ensure_finite(losses["loss"], distributed)
                backward(losses["loss"] / count, scaler)
            for name, value in losses.items():
                totals[name] = totals.get(name, 0.0) + value.item() / count
        return totals

    return step
