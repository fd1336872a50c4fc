"""Long-CLIP's short-caption loss (primary component matching) and label-smoothed CLIP loss.

Source: Long-CLIP, arXiv 2403.15378 (github.com/beichenzbc/Long-CLIP @ 3966af9a, train/train.py and model/model_longclip.py).
Long-CLIP argues that a short caption names only an image's main attributes, so it matches short captions not
against the full image feature but against a rank-k reconstruction of it: the batch's (normalised) image
features are centred, projected on their first k principal components and mapped back (mean added again, no
renormalisation). Long-CLIP uses k = 32 and label smoothing 0.1 in both the long and the short loss.

The principal subspace is computed from detached features: values are Long-CLIP's, and the gradient flows
through the projection linearly. Differentiating through the SVD itself is undefined where singular values
repeat (Long-CLIP's code notes that its SVD "may encounter infs").
"""
import logging

import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from torch import nn

from training_ext.stages.flags import DEFAULT_PCM_COMPONENTS, SHORT_CAPTION_LOSSES  # noqa: F401


def pca_reconstruct(features: torch.Tensor, components: int) -> torch.Tensor:
    """(B, D) features projected on their first ``components`` principal components (centred), mean added back."""
    if components < 1:
        raise ValueError(f"the number of principal components must be >= 1, got {components}")
    features = features.float()
    mean = features.mean(dim=0, keepdim=True)
    centred = features - mean
    with torch.no_grad():
        _, _, right = torch.linalg.svd(centred.detach(), full_matrices=False)
        basis = right[:components].T  # (D, k'), k' = min(components, B, D)
    return centred @ basis @ basis.T + mean


class SmoothedClipLoss(ClipLoss):
    """open_clip's ClipLoss (same gathering across processes) with cross-entropy label smoothing."""

    def __init__(self, label_smoothing: float = 0.0, **clip_loss_options):
        super().__init__(**clip_loss_options)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def forward(self, image_features, text_features, logit_scale, logit_bias=None, output_dict=False):
        logits_per_image, logits_per_text = self.get_logits(image_features, text_features, logit_scale, logit_bias)
        labels = self.get_ground_truth(image_features.device, logits_per_image.shape[0])
        loss = (F.cross_entropy(logits_per_image, labels, label_smoothing=self.label_smoothing)
                + F.cross_entropy(logits_per_text, labels, label_smoothing=self.label_smoothing)) / 2
        return {"contrastive_loss": loss} if output_dict else loss


class PrincipalComponentMatchingLoss(nn.Module):
    """Short captions against the rank-k PCA reconstruction of the batch's image features (Long-CLIP).

    B centred features have rank at most B - 1: for B <= k + 1 the reconstruction is exact and this loss is the
    CLIP loss. Stage 2 refuses flags that make every step so (FinetuneFlags); steps that unreadable images cut
    down to that size are counted in ``exact_steps``, the first one logged."""

    def __init__(self, clip_loss: ClipLoss, components: int = DEFAULT_PCM_COMPONENTS):
        super().__init__()
        if components < 1:
            raise ValueError(f"--pcm-components must be >= 1, got {components}")
        self.clip_loss = clip_loss
        self.components = components
        self.exact_steps = 0

    def forward(self, image_features, short_text_features, logit_scale, logit_bias=None):
        """(B, D) image and short-caption features, a scalar logit scale (and logit bias, for the sigmoid loss) ->
        the scalar loss (float32)."""
        if len(image_features) <= self.components + 1:
            self.exact_steps += 1
            if self.exact_steps == 1:
                logging.warning(f"PCM short-caption loss over {len(image_features)} image features (unreadable images "
                                f"left out): rank at most {len(image_features) - 1} <= {self.components} components, "
                                f"so on such a step it equals the CLIP loss (logged once)")
        return self.clip_loss(pca_reconstruct(image_features, self.components), short_text_features, logit_scale,
                              logit_bias)
