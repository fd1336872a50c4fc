"""Long-CLIP's losses written naively in numpy float64: references for the PCM and smoothed CLIP loss tests."""
import numpy as np


def naive_pca_reconstruct(x: np.ndarray, k: int) -> np.ndarray:
    """Eigenvectors of the covariance (largest k), projection and back, in float64."""
    mean = x.mean(axis=0, keepdims=True)
    centred = x - mean
    values, vectors = np.linalg.eigh(centred.T @ centred)
    top = vectors[:, np.argsort(values)[::-1][:k]]
    return centred @ top @ top.T + mean


def naive_smoothed_clip_loss(image, text, scale, smoothing):
    """Mean over both directions of -sum_j q_ij log softmax(logits_i)_j, q = (1 - e) onehot + e / N."""
    def one_direction(logits):
        n = logits.shape[0]
        total = 0.0
        for i in range(n):
            log_p = logits[i] - np.log(np.exp(logits[i] - logits[i].max()).sum()) - logits[i].max()
            target = np.full(n, smoothing / n)
            target[i] += 1 - smoothing
            total += -(target * log_p).sum()
        return total / n
    logits = scale * image @ text.T
    return (one_direction(logits) + one_direction(logits.T)) / 2
