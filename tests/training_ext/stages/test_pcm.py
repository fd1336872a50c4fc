"""Long-CLIP's primary component matching loss and the label-smoothed CLIP loss, against naive versions."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from training_ext.stages.pcm import PrincipalComponentMatchingLoss, SmoothedClipLoss, pca_reconstruct

from support.naive_losses import naive_pca_reconstruct, naive_smoothed_clip_loss


def test_pca_reconstruction_matches_covariance_eigenvectors():
    x = F.normalize(torch.randn(40, 16, dtype=torch.float64) @ torch.randn(16, 16, dtype=torch.float64), dim=-1)
    got = pca_reconstruct(x, 5)
    np.testing.assert_allclose(got.numpy(), naive_pca_reconstruct(x.numpy(), 5), atol=1e-5)
    # Enough components span the centred batch: the reconstruction is the input.
    torch.testing.assert_close(pca_reconstruct(x.float(), 16), x.float(), atol=1e-5, rtol=0)


def test_pca_gradient_is_finite_for_batches_smaller_than_the_width():
    x = torch.randn(4, 16, requires_grad=True)
    pca_reconstruct(F.normalize(x, dim=-1), 32).square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_smoothed_clip_loss():
    image, text = F.normalize(torch.randn(6, 8), dim=-1), F.normalize(torch.randn(6, 8), dim=-1)
    scale = torch.tensor(20.0)
    assert torch.allclose(SmoothedClipLoss(0.0)(image, text, scale), ClipLoss()(image, text, scale))
    expected = naive_smoothed_clip_loss(image.double().numpy(), text.double().numpy(), 20.0, 0.1)
    assert SmoothedClipLoss(0.1)(image, text, scale).item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="label smoothing"):
        SmoothedClipLoss(1.0)


def test_pcm_loss_is_clip_loss_against_reconstructed_images():
    image = F.normalize(torch.randn(12, 8), dim=-1)
    short = F.normalize(torch.randn(12, 8), dim=-1)
    loss = PrincipalComponentMatchingLoss(SmoothedClipLoss(0.1), components=3)(image, short, torch.tensor(10.0))
    reconstructed = naive_pca_reconstruct(image.double().numpy(), 3)
    expected = naive_smoothed_clip_loss(reconstructed, short.double().numpy(), 10.0, 0.1)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("batch", [33, 20, 2])
def test_pcm_loss_is_the_clip_loss_when_the_batch_is_at_most_components_plus_one(batch):
    # B centred features have rank at most B - 1 <= 32: the 32-component reconstruction is the features themselves
    torch.manual_seed(batch)
    image = F.normalize(torch.randn(batch, 64), dim=-1)
    short = F.normalize(torch.randn(batch, 64), dim=-1)
    pcm = PrincipalComponentMatchingLoss(SmoothedClipLoss(0.1), components=32)
    got = pcm(image, short, torch.tensor(10.0)).item()
    plain = naive_smoothed_clip_loss(image.double().numpy(), short.double().numpy(), 10.0, 0.1)  # no PCA at all
    assert got == pytest.approx(plain, rel=1e-5)
    assert pcm.exact_steps == 1


def test_pcm_loss_differs_from_the_clip_loss_above_components_plus_one():
    torch.manual_seed(0)
    image = F.normalize(torch.randn(34, 64), dim=-1)
    short = F.normalize(torch.randn(34, 64), dim=-1)
    pcm = PrincipalComponentMatchingLoss(SmoothedClipLoss(0.1), components=32)
    got = pcm(image, short, torch.tensor(10.0)).item()
    image, short = image.double().numpy(), short.double().numpy()
    assert got != pytest.approx(naive_smoothed_clip_loss(image, short, 10.0, 0.1), rel=1e-4)
    expected = naive_smoothed_clip_loss(naive_pca_reconstruct(image, 32), short, 10.0, 0.1)
    assert got == pytest.approx(expected, rel=1e-5) and pcm.exact_steps == 0
