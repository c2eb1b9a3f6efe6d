"""The map methods as pure NumPy; the model-facing plumbing lives in `backend.py` and `maps.py`.

Layer methods turn a layer's activations A and the gradients G of the target score with respect
to them, both (B, h, w, C), into a map (B, h, w) before the ReLU. Each first builds "weighted
activations" (B, h, w, C) and then sums them over channels, or with `eigen_smooth=True` takes
their first principal component (pytorch-grad-cam's option: it keeps the dominant pattern and
drops channel noise):

    gradcam              mean_hw(G_c) A_c                         (Selvaraju et al. 2017)
    gradcampp            like gradcam, positive gradients weighted by
                         alpha = G^2 / (2G^2 + sum_hw(A) G^3)     (Chattopadhay et al. 2018)
    xgradcam             sum_hw(G_c A_c) / sum_hw(A_c) * A_c      (Fu et al. 2020)
    layercam             relu(G_c) * A_c, pixel by pixel          (Jiang et al. 2021)
    hirescam             G_c * A_c, pixel by pixel                (Draelos & Carin 2020)
    gradcam_elementwise  relu(G_c * A_c), pixel by pixel          (pytorch-grad-cam)
    eigencam             first principal component of A           (Muhammad & Yeasin 2020; class-agnostic)
    eigengradcam         first principal component of G * A       (pytorch-grad-cam)
    ablationcam          weights w_c = (y - y_without_c) / |y|    (Desai & Ramaswamy 2020); `ablation_weights`
    scorecam             softmax over channels of the score of the image masked by each channel
                         (Wang et al. 2020); `scorecam_weights`

Input-space methods give a map at the input resolution from gradients with respect to the
pixels, or from scores of perturbed images:

    saliency             |dS/dx|                                  (Simonyan et al. 2014)
    smoothgrad           mean over noisy copies of |dS/dx|        (Smilkov et al. 2017)
    intgrad              (x - x') * mean over the straight path of dS/dx  (Sundararajan et al. 2017)
    occlusion            per pixel, mean score drop of the windows that cover it  (Zeiler & Fergus 2014)

Functions rather than classes (pytorch-grad-cam overrides one method per class): nothing here
needs state.
"""

from __future__ import annotations

import numpy as np


def first_component(weighted) -> np.ndarray:
    """(B, h, w, C) -> (B, h, w): each image's pixels projected on the first principal component
    of their C-vectors (centred first, as pytorch-grad-cam's get_2d_projection). The SVD leaves
    the component's sign arbitrary, so it is turned to agree with the channel sum: the map then
    shows where the weighted activations are large, not where they are small."""
    out = []
    for m in np.asarray(weighted, np.float64):
        flat = m.reshape(-1, m.shape[-1])
        centred = flat - flat.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        projection = centred @ vt[0]
        if np.dot(projection, flat.sum(axis=1) - flat.sum(axis=1).mean()) < 0:
            projection = -projection
        out.append(projection.reshape(m.shape[:2]))
    return np.asarray(out, np.float32)


def collapse(weighted, eigen_smooth=False) -> np.ndarray:
    """Weighted activations (B, h, w, C) -> map (B, h, w): channel sum or first component."""
    return first_component(weighted) if eigen_smooth else weighted.sum(axis=-1)


def _per_channel(a, weights):
    return a * weights[:, None, None, :]


def gradcam(a, g, eigen_smooth=False):
    return collapse(_per_channel(a, g.mean(axis=(1, 2))), eigen_smooth)


def gradcampp(a, g, eigen_smooth=False):
    g2, g3 = g * g, g * g * g
    denom = 2 * g2 + a.sum(axis=(1, 2), keepdims=True) * g3
    # Only positive gradients carry weight below, and there denom > 0 for non-negative activations;
    # the guard keeps a signed layer (e.g. a conv before its ReLU) from dividing by zero.
    alpha = np.divide(g2, denom, out=np.zeros_like(g), where=(g > 0) & (denom > 0))
    return collapse(_per_channel(a, (np.maximum(g, 0) * alpha).sum(axis=(1, 2))), eigen_smooth)


def xgradcam(a, g, eigen_smooth=False):
    # 1e-7 as pytorch-grad-cam: a channel that is zero everywhere gets weight 0, not NaN.
    weights = (g * a).sum(axis=(1, 2)) / (a.sum(axis=(1, 2)) + 1e-7)
    return collapse(_per_channel(a, weights), eigen_smooth)


def layercam(a, g, eigen_smooth=False):
    return collapse(np.maximum(g, 0) * a, eigen_smooth)


def hirescam(a, g, eigen_smooth=False):
    return collapse(g * a, eigen_smooth)


def gradcam_elementwise(a, g, eigen_smooth=False):
    return collapse(np.maximum(g * a, 0), eigen_smooth)


def eigencam(a, g=None, eigen_smooth=False):
    """Needs no gradient (g is ignored) and no target: the same map for "fracture" and "normal"."""
    return first_component(a)


def eigengradcam(a, g, eigen_smooth=False):
    return first_component(g * a)


def ablation_weights(score, ablated_scores):
    """Channel weights (C,) from the target score of one image and its scores with each channel
    set to zero: the relative drop. pytorch-grad-cam divides by the score itself, which turns the
    map upside down when the score is negative; dividing by its magnitude keeps the map's sign."""
    return (score - np.asarray(ablated_scores, np.float64)) / max(abs(float(score)), 1e-7)


def scorecam_weights(scores):
    """Channel weights from the target scores (C,) of the image masked by each channel: their
    softmax, shifted by the maximum so exp never overflows."""
    weights = np.exp(scores - scores.max())
    return weights / weights.sum()


# ------------------------------------------------------------------------------------------------
# input space: gradients (B, H, W, 1) of the target score with respect to the pixels
# ------------------------------------------------------------------------------------------------
def saliency(grads):
    return np.abs(grads).sum(axis=-1)


def smoothgrad(noisy_grads):
    """noisy_grads (S, B, H, W, 1): the gradients of S noisy copies of each image."""
    return np.abs(noisy_grads).mean(axis=0).sum(axis=-1)


def integrated_gradients(x, baseline, path_grads):
    """path_grads (S, B, H, W, 1): gradients at baseline + alpha_s (x - baseline), alpha_s the
    midpoints (s + 0.5) / S (a Riemann sum, exact for a linear model). Signed: the pipeline's ReLU
    keeps the evidence for the target."""
    return ((x - baseline) * path_grads.mean(axis=0)).sum(axis=-1)


def integration_points(steps) -> np.ndarray:
    return (np.arange(steps) + 0.5) / steps


def occlusion_windows(size, window, stride) -> list[tuple[int, int]]:
    """Top-left corners (y, x) of square windows sliding over a size x size image, the last one
    flush with the far edge so every pixel is covered."""
    starts = list(range(0, max(size - window, 0) + 1, stride))
    if starts[-1] != max(size - window, 0):
        starts.append(size - window)
    return [(y, x) for y in starts for x in starts]


def occlusion(drops, windows, window, size):
    """drops (B, N): score of the image minus score with window n filled; the map (B, H, W) holds
    at each pixel the mean drop of the windows that cover it (as captum's Occlusion)."""
    total = np.zeros((len(drops), size, size), np.float64)
    count = np.zeros((size, size), np.float64)
    for n, (y, x) in enumerate(windows):
        total[:, y:y + window, x:x + window] += drops[:, n, None, None]
        count[y:y + window, x:x + window] += 1
    return (total / np.maximum(count, 1)).astype(np.float32)


GRADIENT_METHODS = {
    "gradcam": gradcam, "gradcampp": gradcampp, "xgradcam": xgradcam, "layercam": layercam,
    "hirescam": hirescam, "gradcam_elementwise": gradcam_elementwise, "eigengradcam": eigengradcam,
}
ACTIVATION_METHODS = {"eigencam": eigencam}  # activations only: no backward pass
SCORE_METHODS = ("ablationcam", "scorecam")  # channel weights from forward passes of perturbed inputs
LAYER_METHODS = (*GRADIENT_METHODS, *ACTIVATION_METHODS, *SCORE_METHODS)
INPUT_METHODS = ("saliency", "smoothgrad", "intgrad", "occlusion")  # maps of the pixels: no layer
METHODS = (*LAYER_METHODS, *INPUT_METHODS)
CLASS_AGNOSTIC = ("eigencam", "saliency", "smoothgrad")  # the same map for either target
# What a panel shows unless --methods says otherwise: a gradient map, its pixel-wise variant, a
# gradient-free one and a pixel-level one; `--methods all` draws every method, one page per layer.
DEFAULT_METHODS = ("gradcam", "layercam", "eigencam", "intgrad")
