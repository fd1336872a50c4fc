"""Stage 1 on the engine: relative position distillation (TULIP, arXiv 2410.10034, section 3.2).

What differs from the engine's defaults: two models (frozen teacher, student whose text side trains), text-only
training data (no image is decoded), the distillation step, and validation that pairs the teacher's image tower
with the student's text tower.
"""
import logging

import open_clip
import torch
from open_clip_train.precision import get_autocast

from open_clip_ext.convert import convert_state_dict, uses_quick_gelu
from open_clip_ext.state_dicts import is_image_side_key

from training_ext.data.loaders import dataset_type, get_text_data
from training_ext.data.skips import TextCheck
from training_ext.engine.builders import create_clip
from training_ext.engine.trainer import StageModels, TrainingStage
from training_ext.stages.cached_targets import attach_target_map, cache_tokenizer, open_run_cache
from training_ext.stages.distill import (StudentTextFeatures, TeacherTextFeatures, freeze_all_but_text,
                                         make_distill_step)
from training_ext.stages.flags import DistillFlags
from training_ext.stages.text_inputs import TeacherInputs


def init_student_from_teacher(student, teacher, teacher_name: str) -> None:
    """TULIP starts the student from the teacher: every tensor of the teacher but its learned positions (a
    RoPE/CoPE tower has none; CoPE's tables start at zero), converted as open_clip_ext loads stock weights."""
    state = convert_state_dict(student, teacher.state_dict(), path=f"teacher {teacher_name}")
    student.load_state_dict(state)
    logging.info(f"student: initialised from the teacher {teacher_name} (text tower without positions, vision "
                 "tower, logit scale); pass --pretrained to start from other weights")


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


class DistillStage(DistillFlags, TrainingStage):
    """Stage 1's hooks; its flags and checks are ``DistillFlags``'s."""

    # the distillation losses (cosine, mse, l2) are means of per-caption terms: one pair is a valid step
    min_pairs_per_step = 1

    def build_models(self, args, device) -> StageModels:
        teacher = None
        if args.teacher_model:  # optional with --teacher-cache: then it only gives the vision tower and validation
            teacher, _, teacher_preprocess_val = create_clip(args, args.teacher_model, args.teacher_pretrained,
                                                             device, with_flags=False)
        from_teacher = teacher is not None and not args.pretrained
        if from_teacher and uses_quick_gelu(teacher) and not args.force_quick_gelu:
            args.force_quick_gelu = True  # the student keeps the teacher's activation (TULIP's used GELU)
            logging.info("student: QuickGELU, the teacher's activation (--force-quick-gelu)")
        student, preprocess_train, preprocess_val = create_clip(args, args.model, args.pretrained, device,
                                                                weights_follow=from_teacher)
        if from_teacher:
            init_student_from_teacher(student, teacher, args.teacher_model)
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
        cache = models.extras["cache"]
        if cache is None:  # the live teacher reads its own tokenizer's view of each caption
            teacher = models.extras["teacher"]
            teacher_tokenizer = open_clip.get_tokenizer(args.teacher_model, context_length=int(teacher.context_length),
                                                        cache_dir=args.cache_dir)
            inputs = models.extras["teacher_inputs"] = TeacherInputs(tokenizer, teacher_tokenizer)
            logging.info(f"teacher inputs: {inputs.describe()}")
            return get_text_data(args, inputs.data_tokenizer, epoch=epoch)  # its TextCheck holds both tokenizers
        # the precompute skipped the captions without text for the teacher's tokenizer: skip them here too, or
        # they would be looked up in a cache that lacks them
        text_check = TextCheck([tokenizer, *cache_tokenizer(args, cache)])
        return get_text_data(args, tokenizer, epoch=epoch, teacher_cache=cache, text_check=text_check)

    def training_module(self, models):
        return StudentTextFeatures(models.model)

    def make_step(self, args, device, trained, models, scaler):
        cached = models.extras["cache"] is not None
        live_teacher = None if cached else TeacherTextFeatures(models.extras["teacher"],  # cached batches bring targets
                                                               models.extras["teacher_inputs"])
        autocast = get_autocast(args.precision, device_type=device.type)
        return make_distill_step(trained, live_teacher, args.distill_loss, device, autocast, scaler, args.distributed)
