"""Stage 2 entry point: fine-tune the whole CLIP (distilled student text tower + vision tower) on long captions.

    python -m training_ext.main_context_finetune_rope --model ViT-L-14-rope-248 --pretrained openai \\
        --student-checkpoint logs/<stage1>/checkpoints/epoch_30.pt --short-caption-weight 0.2 \\
        --train-data train.csv ...
    torchrun --nproc_per_node 8 -m training_ext.main_context_finetune_rope -- <same flags>
    # Long-CLIP's way (no stage 1): stretched positions, PCM short-caption loss, label smoothing
    python -m training_ext.main_context_finetune_rope --model ViT-L-14-longclip-248 --pretrained openai \
        --short-caption-loss pcm --short-caption-weight 1 --label-smoothing 0.1 --train-data train.csv ...

Run with --help for TULIP's flags followed by all open_clip_train flags.
"""
import logging
import sys

import open_clip
from open_clip import get_input_dtype
from open_clip_train.precision import get_autocast
from open_clip_ext.longclip import LongCLIPTextTransformer

from .builders import clamp_logit_scale, create_clip, resume_if_asked, trained_model_config, wrap_for_processes
from .data import get_image_text_data
from .finetune import ClipFeatures, clip_loss_for, make_finetune_step, short_caption_loss_for
from .loop import TrainState, train
from .optim import create_optimizer, create_scaler, create_scheduler
from .session import command_line, open_wandb, run_stage, seed_everything, write_params
from .student_checkpoint import load_student_text_tower
from .validation import make_retrieval_validation


def lock_towers(model, args) -> None:
    """--lock-image / --lock-text as open_clip_train applies them (LiT-style, optional unlocked groups)."""
    if args.lock_image:
        model.lock_image_tower(unlocked_groups=args.lock_image_unlocked_groups,
                               freeze_bn_stats=args.lock_image_freeze_bn_stats)
    if args.lock_text:
        if not args.lock_text_freeze_layer_norm:
            # open_clip 3.3's text towers always lock LayerNorms with the other weights (and assert on False)
            logging.info("--lock-text: LayerNorms are locked with the other text weights (open_clip 3.3 behaviour)")
        model.lock_text_tower(unlocked_layers=args.lock_text_unlocked_layers, freeze_layer_norm=True)


def train_finetuning(args, device, writer) -> TrainState:
    """CLIP with the distilled text tower, image data with short captions, then the epoch loop."""
    seed_everything(args.seed)
    model, preprocess_train, preprocess_val = create_clip(args, args.model, args.pretrained, device)
    if args.student_checkpoint:
        load_student_text_tower(model, args.student_checkpoint)
    elif not isinstance(getattr(model, "text", None), LongCLIPTextTransformer):  # Long-CLIP needs no stage 1
        logging.warning("no --student-checkpoint: the text tower is the one --pretrained gives (not distilled)")
    lock_towers(model, args)
    if args.grad_checkpointing:
        model.set_grad_checkpointing()
    seed_everything(args.seed + args.rank)
    write_params(args)

    optimizer = create_optimizer(model, args)
    scaler = create_scaler(args, device)
    epoch, step = resume_if_asked(args, model, optimizer, scaler)
    tokenizer = open_clip.get_tokenizer(args.model, context_length=args.force_context_length,
                                        cache_dir=args.cache_dir)
    image_size = preprocess_val.transforms[0].size
    train_data = get_image_text_data(args, tokenizer, preprocess_train, is_train=True, epoch=epoch,
                                     image_size=image_size)
    val_data = None
    if args.val_data:
        val_data = get_image_text_data(args, tokenizer, preprocess_val, is_train=False, image_size=image_size)
    scheduler = create_scheduler(optimizer, args, train_data.dataloader.num_batches // args.accum_freq)
    open_wandb(args, train_data.dataloader.num_samples)

    features = ClipFeatures(model)
    trained = wrap_for_processes(features, args, device)
    state = TrainState(model=model, trained=trained, optimizer=optimizer, scaler=scaler, scheduler=scheduler,
                       model_cfg=trained_model_config(args, model), epoch=epoch, step=step,
                       last_checkpoint=args.resume)
    clip_loss = clip_loss_for(args)
    step_fn = make_finetune_step(
        trained, features, clip_loss, args.short_caption_weight, device,
        get_input_dtype(args.precision), get_autocast(args.precision, device_type=device.type), scaler,
        args.distributed, short_loss=short_caption_loss_for(args, clip_loss))
    evaluate = make_retrieval_validation(args, model, model, val_data, device, writer, state)
    train(state, args, train_data, step_fn, after_update=lambda: clamp_logit_scale(model), evaluate=evaluate,
          writer=writer, extra_scalars=lambda: {"scale": model.logit_scale.exp().item()})
    return state


def run(args) -> TrainState:
    """Train as the parsed flags say; returns the final state (model, optimizer, epoch, step, last checkpoint)."""
    return run_stage(args, train_finetuning)


def main(argv=None) -> None:
    command_line(argv, "finetune", train_finetuning)


if __name__ == "__main__":
    main(sys.argv[1:])
