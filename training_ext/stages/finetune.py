"""Stage 2, context fine-tuning: CLIP loss on long captions + w x CLIP loss on short captions.

The CLIP loss is open_clip's softmax ClipLoss, or with --siglip open_clip's sigmoid SigLipLoss (SigLIP-family bases,
whose models carry a learned logit bias) for both terms.

Each image is encoded once per step and serves both losses (TULIP's reference encoded it twice). With
--accum-freq k the step uses gradient caching: features of all k micro-batches are computed without grad, the
loss of the whole k-times larger batch is differentiated with respect to those features, then each micro-batch
is re-encoded with grad and back-propagated with its share of the feature gradients. The summed parameter
gradient is exactly that of the large batch (contrastive losses do not split into per-micro-batch terms, so
simply dividing k separate losses would not be).
"""
from typing import Callable, Dict, List, Optional

import torch
from open_clip.loss import ClipLoss, SigLipLoss
from torch import nn

from open_clip_ext.tokens import trim_padding, trims_padding_exactly
from open_clip_train.train import backward

from training_ext.engine.checkpoint import ensure_finite
from training_ext.engine.distributed import no_sync_unless
from training_ext.stages.pcm import PrincipalComponentMatchingLoss, SmoothedClipLoss


class ClipFeatures(nn.Module):
    """forward(images, long_ids, short_ids or None) -> (image, long, short or None, logit_scale, logit_bias or
    None): normalised (B, D) features, exp(logit_scale) and, with ``logit_bias`` (--siglip), the model's scalar
    logit bias (else None: the softmax loss has no use for it). The module DDP wraps in stage 2."""

    def __init__(self, clip_model: nn.Module, logit_bias: bool = False):
        super().__init__()
        self.clip = clip_model
        self.trim = trims_padding_exactly(clip_model)
        self.logit_bias = logit_bias

    def _encode_texts(self, long_ids: torch.Tensor, short_ids: Optional[torch.Tensor]):
        if short_ids is None:
            return self.clip.encode_text(self._trimmed(long_ids), normalize=True), None
        if self.trim:  # short captions are far shorter than long ones: trim each batch on its own
            return (self.clip.encode_text(trim_padding(long_ids, self.clip), normalize=True),
                    self.clip.encode_text(trim_padding(short_ids, self.clip), normalize=True))
        both = self.clip.encode_text(torch.cat([long_ids, short_ids]), normalize=True)
        return both[: len(long_ids)], both[len(long_ids):]

    def _trimmed(self, ids: torch.Tensor) -> torch.Tensor:
        return trim_padding(ids, self.clip) if self.trim else ids

    def forward(self, images: torch.Tensor, long_ids: torch.Tensor, short_ids: Optional[torch.Tensor] = None):
        image = self.clip.encode_image(images, normalize=True)
        long, short = self._encode_texts(long_ids, short_ids)
        return image, long, short, self.clip.logit_scale.exp(), self.clip.logit_bias if self.logit_bias else None


def clip_loss_for(args) -> nn.Module:
    """--siglip: open_clip's SigLipLoss as open_clip.create_loss builds it (its own neighbour exchange across
    processes, --loss-dist-impl); else open_clip's ClipLoss with open_clip_train's distributed flags
    (--local-loss, --gather-with-grad), and --label-smoothing (0: exactly ClipLoss). Either is called
    ``loss(image, text, logit_scale, logit_bias)``."""
    if getattr(args, "siglip", False):
        return SigLipLoss(rank=args.rank, world_size=args.world_size, dist_impl=args.loss_dist_impl)
    return SmoothedClipLoss(label_smoothing=getattr(args, "label_smoothing", 0.0), local_loss=args.local_loss,
                            gather_with_grad=args.gather_with_grad, cache_labels=True, rank=args.rank,
                            world_size=args.world_size)


def short_caption_loss_for(args, clip_loss: ClipLoss) -> Optional[Callable]:
    """--short-caption-loss pcm: Long-CLIP's primary component matching; None: the CLIP loss (TULIP)."""
    if getattr(args, "short_caption_loss", "clip") == "pcm":
        return PrincipalComponentMatchingLoss(clip_loss, args.pcm_components)
    return None


def finetune_losses(image, long, short, logit_scale, clip_loss: ClipLoss, short_weight: float,
                    short_loss: Optional[Callable] = None, logit_bias: Optional[torch.Tensor] = None
                    ) -> Dict[str, torch.Tensor]:
    """(B, D) image, long and short (or None) text features, scalar exp(logit_scale) and logit bias (None but
    for --siglip) -> {'long_loss', 'short_loss' (with short features), 'loss' = long + short_weight x short}."""
    bias = None if logit_bias is None else logit_bias.float()
    terms = {"long_loss": clip_loss(image.float(), long.float(), logit_scale.float(), bias)}
    total = terms["long_loss"]
    if short is not None:
        terms["short_loss"] = (short_loss or clip_loss)(image.float(), short.float(), logit_scale.float(), bias)
        total = total + short_weight * terms["short_loss"]
    terms["loss"] = total
    return terms


def _on_device(batch, device, input_dtype, use_short: bool):
    images, long_ids, short_ids = batch
    return (images.to(device=device, dtype=input_dtype, non_blocking=True),
            long_ids.to(device=device, non_blocking=True),
            short_ids.to(device=device, non_blocking=True) if use_short else None)


def make_finetune_step(trained: nn.Module, features: ClipFeatures, clip_loss: ClipLoss, short_weight: float,
                       device, input_dtype, autocast: Callable, scaler, distributed: bool,
                       short_loss: Optional[Callable] = None) -> Callable:
    """The stage-2 step: ``trained`` is ``features`` or its DDP wrapper; ``short_loss`` replaces the CLIP loss
    on short captions (Long-CLIP's PCM)."""
    use_short = short_weight > 0

    def single(batch) -> Dict[str, torch.Tensor]:
        with autocast():
            outputs = trained(*_on_device(batch, device, input_dtype, use_short))
        *features_and_scale, bias = outputs
        losses = finetune_losses(*features_and_scale, clip_loss, short_weight, short_loss, logit_bias=bias)
        ensure_finite(losses["loss"], distributed)
        backward(losses["loss"], scaler)
        return losses

    def cached(micro_batches: List[tuple]) -> Dict[str, torch.Tensor]:
        inputs = [_on_device(batch, device, input_dtype, use_short) for batch in micro_batches]
        with torch.no_grad(), autocast():
            outputs = [features(*batch) for batch in inputs]
        leaves = [
            None if outputs[0][i] is None else torch.cat([o[i] for o in outputs]).float().requires_grad_()
            for i in range(3)
        ]
        # the scalars are leaves too: the step's gradient reaches them through each micro-batch's re-encoding
        scale, bias = (None if outputs[0][i] is None else outputs[0][i].detach().float().requires_grad_()
                       for i in (3, 4))
        losses = finetune_losses(*leaves, scale, clip_loss, short_weight, short_loss, logit_bias=bias)
        ensure_finite(losses["loss"], distributed)
        losses["loss"].backward()
        sizes = [len(batch[1]) for batch in inputs]
        grads = [None if leaf is None else leaf.grad.split(sizes) for leaf in leaves]
        for index, batch in enumerate(inputs):
            with no_sync_unless(trained, sync=index == len(inputs) - 1):
                with autocast():
                    image, long, short, logit_scale, logit_bias = trained(*batch)
                surrogate = logit_scale.float() * (scale.grad / len(inputs))
                if bias is not None:
                    surrogate = surrogate + logit_bias.float() * (bias.grad / len(inputs))
                for output, grad in zip((image, long, short), grads):
                    if grad is not None:
                        surrogate = surrogate + (output.float() * grad[index]).sum()
                backward(surrogate, scaler)
        return losses

    def step(micro_batches: List[tuple]) -> Dict[str, float]:
        losses = single(micro_batches[0]) if len(micro_batches) == 1 else cached(micro_batches)
        return {name: value.item() for name, value in losses.items()}

    return step

