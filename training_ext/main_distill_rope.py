"""Stage 1 entry point: distil a 77-token CLIP text tower into a 248-token RoPE/CoPE student.

    python -m training_ext.main_distill_rope --model ViT-L-14-rope-248 --pretrained openai \\
        --teacher-model ViT-L-14-quickgelu --teacher-pretrained openai --train-data train.csv ...
    torchrun --nproc_per_node 8 -m training_ext.main_distill_rope -- <same flags>
    # with embeddings precomputed by scripts/precompute_teacher_embeddings.py the teacher does not run:
    python -m training_ext.main_distill_rope ... --teacher-cache cache/vitl14 [--teacher-model ... to check it]

Run with --help for TULIP's flags followed by all open_clip_train flags.
"""
import logging
import sys

import open_clip
import torch
from open_clip_train.precision import get_autocast

from .builders import create_clip, resume_if_asked, trained_model_config, wrap_for_processes
from .cached_targets import attach_target_map, open_run_cache
from .data import dataset_type, get_image_text_data, get_text_data
from .distill import StudentTextFeatures, TeacherTextFeatures, freeze_all_but_text, make_distill_step
from .loop import TrainState, train
from .optim import create_optimizer, create_scaler, create_scheduler
from .session import command_line, open_wandb, run_stage, seed_everything, write_params
from .validation import make_retrieval_validation


def copy_vision_from_teacher(student, teacher) -> None:
    """The stage-1 checkpoint is the teacher's vision tower + the student's text tower: the pair validation
    measures, and a full CLIP that ``create_model(name, pretrained=checkpoint)`` loads."""
    wanted = {k: v for k, v in student.state_dict().items() if k.startswith("visual.") or k == "logit_scale"}
    given = teacher.state_dict()
    misfits = [k for k, v in wanted.items() if k not in given or given[k].numel() != v.numel()]
    if misfits:
        logging.warning(f"teacher and student vision towers differ ({len(misfits)} tensors, e.g. {misfits[0]}); "
                        "the student keeps its own vision tower")
        return
    with torch.no_grad():
        for name, tensor in wanted.items():
            tensor.copy_(given[name].reshape(tensor.shape))


def train_distillation(args, device, writer) -> TrainState:
    """Teacher (frozen) and student, text-only data, then the epoch loop with teacher-image validation."""
    seed_everything(args.seed)
    teacher = None
    if args.teacher_model:  # optional with --teacher-cache: then it only gives the vision tower and validation
        teacher, _, teacher_preprocess_val = create_clip(args, args.teacher_model, args.teacher_pretrained, device,
                                                         with_flags=False)
    student, _, student_preprocess_val = create_clip(args, args.model, args.pretrained, device)
    # validation pairs the teacher's image tower (the student's without a teacher) with the student's text
    image_model, preprocess_val = student, student_preprocess_val
    if teacher is not None:
        image_model, preprocess_val = teacher, teacher_preprocess_val
        copy_vision_from_teacher(student, teacher)
    cache = None
    if args.teacher_cache:
        cache = open_run_cache(args, dataset_type(args, args.train_data), teacher)
        attach_target_map(student, cache.width)  # before the optimizer and resume see the student's parameters
    freeze_all_but_text(student)
    if args.grad_checkpointing:
        student.set_grad_checkpointing()
    seed_everything(args.seed + args.rank)
    write_params(args)

    optimizer = create_optimizer(student, args)
    scaler = create_scaler(args, device)
    epoch, step = resume_if_asked(args, student, optimizer, scaler)  # into the student, never the teacher
    tokenizer = open_clip.get_tokenizer(args.model, context_length=args.force_context_length,
                                        cache_dir=args.cache_dir)
    train_data = get_text_data(args, tokenizer, epoch=epoch, teacher_cache=cache)
    val_data = None
    if args.val_data:
        image_size = preprocess_val.transforms[0].size
        val_data = get_image_text_data(args, tokenizer, preprocess_val, is_train=False, image_size=image_size)
    steps_per_epoch = train_data.dataloader.num_batches // args.accum_freq
    scheduler = create_scheduler(optimizer, args, steps_per_epoch)
    open_wandb(args, train_data.dataloader.num_samples)

    trained = wrap_for_processes(StudentTextFeatures(student), args, device)
    state = TrainState(model=student, trained=trained, optimizer=optimizer, scaler=scaler, scheduler=scheduler,
                       model_cfg=trained_model_config(args, student), epoch=epoch, step=step,
                       last_checkpoint=args.resume)
    autocast = get_autocast(args.precision, device_type=device.type)
    live_teacher = None if cache else TeacherTextFeatures(teacher)  # cached batches bring their targets
    step_fn = make_distill_step(trained, live_teacher, args.distill_loss, device, autocast, scaler,
                                args.distributed)
    evaluate = make_retrieval_validation(args, image_model, student, val_data, device, writer, state)
    train(state, args, train_data, step_fn, after_update=lambda: None, evaluate=evaluate, writer=writer)
    return state


def run(args) -> TrainState:
    """Train as the parsed flags say; returns the final state (model, optimizer, epoch, step, last checkpoint)."""
    return run_stage(args, train_distillation)


def main(argv=None) -> None:
    command_line(argv, "distill", train_distillation)


if __name__ == "__main__":
    main(sys.argv[1:])
