"""The CAM methods as pure NumPy: a layer's activations and gradients in, one map per image out.

The CAM methods as pure NumPy: each turns a layer's activations A and the gradients G of the
target score with respect to them, both (B, h, w, C), into a map (B, h, w) before the ReLU.

    gradcam    sum_c mean_hw(G_c) A_c                    (Selvaraju et al. 2017)
    gradcampp  like gradcam, positive gradients weighted by alpha = G^2 / (2G^2 + sum_hw(A) G^3)
    layercam   sum_c relu(G_c) * A_c, pixel by pixel     (Jiang et al. 2021; good on early layers)
    hirescam   sum_c G_c * A_c, pixel by pixel           (Draelos & Carin 2020)
    scorecam   gradient-free: channel weights = softmax over channels of the target score of the
               image masked by each channel              (Wang et al. 2020); `scorecam_weights`

Functions rather than classes (pytorch-grad-cam overrides one method per class): nothing here
needs state, and the plumbing that does lives in `backend.py`.
"""

from __future__ import annotations

import numpy as np


def _weighted(a, weights):
    return np.einsum("bhwc,bc->bhw", a, weights)


def gradcam(a, g):
    return _weighted(a, g.mean(axis=(1, 2)))


def gradcampp(a, g):
    g2, g3 = g * g, g * g * g
    denom = 2 * g2 + a.sum(axis=(1, 2), keepdims=True) * g3
    # Only positive gradients carry weight below, and there denom > 0 for non-negative activations;
    # the guard keeps a signed layer (e.g. a conv before its ReLU) from dividing by zero.
    alpha = np.divide(g2, denom, out=np.zeros_like(g), where=(g > 0) & (denom > 0))
    return _weighted(a, (np.maximum(g, 0) * alpha).sum(axis=(1, 2)))


def layercam(a, g):
    return (np.maximum(g, 0) * a).sum(axis=-1)


def hirescam(a, g):
    return (g * a).sum(axis=-1)


def scorecam_weights(scores):
    """Channel weights from the target scores (C,) of the image masked by each channel: their
    softmax, shifted by the maximum so exp never overflows."""
    weights = np.exp(scores - scores.max())
    return weights / weights.sum()


GRADIENT_METHODS = {"gradcam": gradcam, "gradcampp": gradcampp, "layercam": layercam, "hirescam": hirescam}
METHODS = (*GRADIENT_METHODS, "scorecam")
