"""Stage 1 on the engine: relative position distillation (TULIP, arXiv 2410.10034, section 3.2).

What differs from the engine's defaults: two models (frozen teacher, student whose text side trains), text-only
training data (no image is decoded), the distillation step, and validation that pairs the teacher's image tower
with the student's text tower.
"""
import argparse
import logging

import torch
from open_clip_train.precision import get_autocast

from open_clip_ext.state_dicts import is_image_side_key

from training_ext.data.loaders import dataset_type, get_text_data
from training_ext.engine.builders import create_clip
from training_ext.engine.trainer import StageModels, TrainingStage
from training_ext.stages.cached_targets import attach_target_map, open_run_cache
from training_ext.stages.distill import (StudentTextFeatures, TeacherTextFeatures, freeze_all_but_text,
                                         make_distill_step)

DISTILL_LOSSES = ("cosine", "mse", "l2")


def parse_loss_weights(spec: str) -> dict:
    """'cosine' -> {'cosine': 1.0}; 'cosine=1,mse=0.5' -> a weighted sum of the named losses."""
    weights = {}
    for part in spec.split(","):
        name, _, weight = part.strip().partition("=")
        if name not in DISTILL_LOSSES:
            raise argparse.ArgumentTypeError(
                f"unknown distillation loss {name!r} in {spec!r}; choose from {', '.join(DISTILL_LOSSES)}")
        try:
            weights[name] = float(weight) if weight else 1.0
        except ValueError:
            raise argparse.ArgumentTypeError(f"weight of {name!r} in {spec!r} is not a number: {weight!r}")
    return weights


def copy_vision_from_teacher(student, teacher) -> None:
    """The stage-1 checkpoint is the teacher's vision tower + the student's text tower: the pair validation
    measures, and a full CLIP that ``create_model(name, pretrained=checkpoint)`` loads."""
    wanted = {k: v for k, v in student.state_dict().items() if is_image_side_key(k)}
    given = teacher.state_dict()
    misfits = [k for k, v in wanted.items() if k not in given or given[k].numel() != v.numel()]
    if misfits:
        logging.warning(f"teacher and student vision towers differ ({len(misfits)} tensors, e.g. {misfits[0]}); "
                        "the student keeps its own vision tower")
        return
    with torch.no_grad():
        for name, tensor in wanted.items():
            tensor.copy_(given[name].reshape(tensor.shape))


class DistillStage(TrainingStage):
    name = "distill"
    prog = "python -m training_ext.main_distill_rope"
    description = "Stage 1: distil a 77-token CLIP text tower into a long-context RoPE/CoPE student."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("stage 1: relative position distillation (open_clip_ext)")
        group.add_argument(
            "--teacher-model", default=None,
            help="The frozen 77-token teacher (e.g. ViT-L-14-quickgelu). It reads the first 77 tokens of the "
                 "student's ids; its image tower is used for validation only. Required unless --teacher-cache.")
        group.add_argument(
            "--teacher-cache", default=None,
            help="Folder of precomputed teacher embeddings (scripts/precompute_teacher_embeddings.py): the "
                 "teacher does not run during training. Refused when it does not match --teacher-model / "
                 "--teacher-pretrained (name, checkpoint sha256, tokenizer length) or the data's caption field; "
                 "embeddings of another width (e.g. an LLM's) are reached through a learned linear map.")
        group.add_argument(
            "--teacher-pretrained", default="",
            help="Weights of the teacher: an open_clip tag (e.g. openai) or a checkpoint path.")
        group.add_argument(
            "--distill-loss", type=parse_loss_weights, default=parse_loss_weights("cosine"),
            help="Loss between student and teacher projected text features: cosine (1 - mean cosine "
                 "similarity), mse (mean squared error) or l2 (mean euclidean distance), or a weighted sum such "
                 "as 'cosine=1,mse=0.5'. Default: cosine.")

    def check_arguments(self, args) -> None:
        if not (args.teacher_model or args.teacher_cache):
            raise SystemExit("stage 1 needs a teacher: --teacher-model (run live) or --teacher-cache (precomputed)")

    def build_models(self, args, device) -> StageModels:
        teacher = None
        if args.teacher_model:  # optional with --teacher-cache: then it only gives the vision tower and validation
            teacher, _, teacher_preprocess_val = create_clip(args, args.teacher_model, args.teacher_pretrained,
                                                             device, with_flags=False)
        student, preprocess_train, preprocess_val = create_clip(args, args.model, args.pretrained, device)
        models = StageModels(model=student, preprocess_train=preprocess_train, preprocess_val=preprocess_val,
                             extras={"teacher": teacher, "cache": None})
        if teacher is not None:
            # validation pairs the teacher's image tower with the student's text
            models.image_model, models.preprocess_val = teacher, teacher_preprocess_val
            copy_vision_from_teacher(student, teacher)
        if args.teacher_cache:
            cache = open_run_cache(args, dataset_type(args, args.train_data), teacher)
            attach_target_map(student, cache.width)  # before the optimizer and resume see the student's parameters
            models.extras["cache"] = cache
        freeze_all_but_text(student)
        return models

    def train_data(self, args, tokenizer, epoch, models):
        return get_text_data(args, tokenizer, epoch=epoch, teacher_cache=models.extras["cache"])

    def training_module(self, models):
        return StudentTextFeatures(models.model)

    def make_step(self, args, device, trained, models, scaler):
        cached = models.extras["cache"] is not None
        live_teacher = None if cached else TeacherTextFeatures(models.extras["teacher"])  # cached batches bring targets
        autocast = get_autocast(args.precision, device_type=device.type)
        return make_distill_step(trained, live_teacher, args.distill_loss, device, autocast, scaler, args.distributed)
