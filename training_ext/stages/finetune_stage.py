"""Stage 2 on the engine: context fine-tuning (TULIP, arXiv 2410.10034, section 3.3), and Long-CLIP's recipe.

What differs from the engine's defaults: one CLIP whose text tower comes from the stage-1 checkpoint, image data
with long and short captions, the long + short CLIP loss step, and the logit-scale clamp after each update.
"""
import argparse
import logging

from open_clip import get_input_dtype
from open_clip_train.precision import get_autocast

from open_clip_ext.longclip import LongCLIPTextTransformer

from training_ext.data.loaders import get_image_text_data
from training_ext.engine.builders import clamp_logit_scale, create_clip
from training_ext.engine.trainer import StageModels, TrainingStage
from training_ext.stages.finetune import ClipFeatures, clip_loss_for, make_finetune_step, short_caption_loss_for
from training_ext.stages.pcm import DEFAULT_PCM_COMPONENTS, SHORT_CAPTION_LOSSES
from training_ext.stages.student_checkpoint import load_student_text_tower


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


class FinetuneStage(TrainingStage):
    name = "finetune"
    prog = "python -m training_ext.main_context_finetune_rope"
    description = "Stage 2: fine-tune the whole CLIP (distilled text tower + image tower) on long captions."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("stage 2: context fine-tuning (open_clip_ext)")
        group.add_argument(
            "--student-checkpoint", default=None,
            help="Stage-1 checkpoint whose text tower (distilled text projection included) replaces the text "
                 "tower built from --pretrained; the vision tower and logit scale come from --pretrained.")
        group.add_argument(
            "--short-caption-weight", type=float, default=0.2,
            help="Loss = CLIP loss on long captions + this weight x CLIP loss on short captions. Default 0.2; "
                 "0 trains on long captions only.")
        group.add_argument(
            "--short-caption-loss", choices=SHORT_CAPTION_LOSSES, default="clip",
            help="Short captions against the image features ('clip', TULIP) or against their rank-k PCA "
                 "reconstruction over the batch ('pcm', Long-CLIP's primary component matching).")
        group.add_argument(
            "--pcm-components", type=int, default=DEFAULT_PCM_COMPONENTS,
            help="Principal components kept by --short-caption-loss pcm (default %(default)s, Long-CLIP's).")
        group.add_argument(
            "--label-smoothing", type=float, default=0.0,
            help="Label smoothing of the long and short CLIP losses (Long-CLIP uses 0.1; default 0).")

    def check_arguments(self, args) -> None:
        if args.short_caption_weight < 0:
            raise SystemExit(f"--short-caption-weight must be >= 0, got {args.short_caption_weight}")
        if args.pcm_components < 1:
            raise SystemExit(f"--pcm-components must be >= 1, got {args.pcm_components}")
        if not 0.0 <= args.label_smoothing < 1.0:
            raise SystemExit(f"--label-smoothing must be in [0, 1), got {args.label_smoothing}")
        if args.short_caption_loss == "pcm" and args.short_caption_weight == 0:
            raise SystemExit("--short-caption-loss pcm needs a --short-caption-weight above 0 (Long-CLIP uses 1)")

    def build_models(self, args, device) -> StageModels:
        model, preprocess_train, preprocess_val = create_clip(args, args.model, args.pretrained, device)
        if args.student_checkpoint:
            load_student_text_tower(model, args.student_checkpoint)
        elif not isinstance(getattr(model, "text", None), LongCLIPTextTransformer):  # Long-CLIP needs no stage 1
            logging.warning("no --student-checkpoint: the text tower is the one --pretrained gives (not distilled)")
        lock_towers(model, args)
        return StageModels(model=model, preprocess_train=preprocess_train, preprocess_val=preprocess_val)

    def train_data(self, args, tokenizer, epoch, models):
        return get_image_text_data(args, tokenizer, models.preprocess_train, is_train=True, epoch=epoch,
                                   image_size=models.image_size)

    def training_module(self, models):
        models.extras["features"] = ClipFeatures(models.model)
        return models.extras["features"]

    def make_step(self, args, device, trained, models, scaler):
        clip_loss = clip_loss_for(args)
        return make_finetune_step(
            trained, models.extras["features"], clip_loss, args.short_caption_weight, device,
            get_input_dtype(args.precision), get_autocast(args.precision, device_type=device.type), scaler,
            args.distributed, short_loss=short_caption_loss_for(args, clip_loss))

    def after_update(self, models) -> None:
        clamp_logit_scale(models.model)

    def extra_scalars(self, models):
        return {"scale": models.model.logit_scale.exp().item()}
