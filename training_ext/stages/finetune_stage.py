"""Stage 2 on the engine: context fine-tuning (TULIP, arXiv 2410.10034, section 3.3), and Long-CLIP's recipe.

What differs from the engine's defaults: one CLIP whose text tower comes from the stage-1 checkpoint, image data
with long and short captions, the long + short CLIP loss step, and the logit-scale clamp after each update.
"""
import logging

from open_clip import get_input_dtype
from open_clip_train.precision import get_autocast

from open_clip_ext.longclip import LongCLIPTextTransformer

from training_ext.data.loaders import get_image_text_data
from training_ext.engine.builders import clamp_logit_scale, create_clip
from training_ext.engine.trainer import StageModels, TrainingStage
from training_ext.stages.finetune import ClipFeatures, clip_loss_for, make_finetune_step, short_caption_loss_for
from training_ext.stages.flags import FinetuneFlags, siglip_needs_bias
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


def use_logit_bias(model, args, error) -> None:
    """--siglip trains the model's logit bias with the sigmoid loss; a model without one (no init_logit_bias in
    its config; ``FinetuneFlags`` refuses the registered ones before building) is refused with ``error``. Without
    --siglip the softmax loss ignores a SigLIP base's bias: it is frozen (kept as loaded, no gradient for DDP to
    wait for) and a warning says so."""
    bias = getattr(model, "logit_bias", None)
    if args.siglip and bias is None:
        error(siglip_needs_bias(args.model))
    if bias is not None and not args.siglip:
        bias.requires_grad_(False)
        logging.warning(f"--model {args.model} has a logit bias (a SigLIP-family model) but stage 2 runs the "
                        "softmax CLIP loss, which ignores it: the bias is frozen as loaded. Pass --siglip to "
                        "fine-tune with SigLIP's sigmoid loss")


class FinetuneStage(FinetuneFlags, TrainingStage):
    """Stage 2's hooks; its flags and checks are ``FinetuneFlags``'s."""

    # the CLIP loss over one pair is a 1x1 logit matrix: exactly 0, whatever the model (FinetuneFlags refuses
    # such flags; this catches steps that unreadable images cut down to one pair)
    min_pairs_per_step = 2

    def build_models(self, args, device) -> StageModels:
        model, preprocess_train, preprocess_val = create_clip(args, args.model, args.pretrained, device)
        if args.student_checkpoint:
            # TULIP's original recipe keeps --pretrained's text projection and extends the RoPE base by NTK
            original = getattr(args, "recipe", "corrected") == "tulip-original"
            load_student_text_tower(model, args.student_checkpoint, keep_text_projection=original,
                                    ntk_extension=original)
        elif not isinstance(getattr(model, "text", None), LongCLIPTextTransformer):  # Long-CLIP needs no stage 1
            logging.warning("no --student-checkpoint: the text tower is the one --pretrained gives (not distilled)")
        use_logit_bias(model, args, self.error)
        lock_towers(model, args)
        return StageModels(model=model, preprocess_train=preprocess_train, preprocess_val=preprocess_val,
                           extras={"logit_bias": args.siglip})

    def train_data(self, args, tokenizer, epoch, models):
        return get_image_text_data(args, tokenizer, models.preprocess_train, is_train=True, epoch=epoch,
                                   image_size=models.image_size)

    def training_module(self, models):
        models.extras["features"] = ClipFeatures(models.model, logit_bias=models.extras["logit_bias"])
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
        scalars = {"scale": models.model.logit_scale.exp().item()}
        if models.extras["logit_bias"]:
            scalars["bias"] = models.model.logit_bias.item()
        return scalars
