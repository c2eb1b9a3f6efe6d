"""Input-space maps (saliency, SmoothGrad, Integrated Gradients, occlusion): evidence per pixel.

They show where in the *pixels* the evidence lies, at the input resolution and with no
layer (the layer argument of `cam_maps` does not apply to them). Gradients come from
`CamEngine.input_gradients`, scores of perturbed images from `predict_logits`, both batched; the
arithmetic is in `methods.py`.

    saliency    |dS/dx| of the image (S: the target score, sign * logit)
    smoothgrad  |dS/dx| averaged over SMOOTHGRAD_SAMPLES copies with Gaussian noise of
                SMOOTHGRAD_NOISE x the image's pixel range (seeded, so a map repeats)
    intgrad     Integrated Gradients from a baseline image x' (IG_BASELINES) in IG_STEPS steps
    occlusion   a window of OCCLUSION_WINDOW x the side, moved by half its size, filled with the
                blurred image; each pixel gets the mean score drop of the windows covering it

Baselines for Integrated Gradients and the occlusion fill: "blurred" (a Gaussian blur of BLUR x
the image side, as the deletion curve: it removes fine detail such as a crack, keeps the bone),
"black" (zeros: the X-ray background, the usual choice in the literature; a dark line drawn by
the path is itself what a crack looks like) or "mean" (every pixel at the image's mean gray).
"""

from __future__ import annotations

import numpy as np

from fracture.cam import methods
from fracture.cam.backend import engine_for, predict_logits
from fracture.errors import FractureError

SMOOTHGRAD_SAMPLES = 16  # noisy copies per image (captum's default is 5, tf-keras-vis's 20)
SMOOTHGRAD_NOISE = 0.15  # noise std as a share of the image's pixel range (Smilkov et al.: 10-20 %)
IG_STEPS = 32  # points on the path from the baseline; the Riemann midpoint rule
IG_BASELINES = ("blurred", "black", "mean")
IG_BASELINE = "blurred"
OCCLUSION_WINDOW = 1 / 8  # window side as a share of the image side (20 px at 160 px)
BLUR = 0.04  # Gaussian sigma as a share of the side, as the deletion curve (metrics.py)


def baseline_images(x, kind=IG_BASELINE, blur=BLUR) -> np.ndarray:
    """Reference images (B, H, W, 1) for Integrated Gradients and occlusion (module doc)."""
    import cv2

    if kind not in IG_BASELINES:
        raise FractureError(f"unknown baseline '{kind}'; use one of {', '.join(IG_BASELINES)}")
    if kind == "black":
        return np.zeros_like(x)
    if kind == "mean":
        return np.broadcast_to(x.mean(axis=(1, 2, 3), keepdims=True), x.shape).astype(np.float32)
    sigma = blur * max(x.shape[1:3])
    return np.stack([cv2.GaussianBlur(i[..., 0], (0, 0), sigma)[..., None] for i in x]).astype(np.float32)


def smoothgrad_noise(x, samples=SMOOTHGRAD_SAMPLES, noise=SMOOTHGRAD_NOISE, seed=0) -> np.ndarray:
    """(S, B, H, W, 1) Gaussian noise, std `noise` x each image's pixel range."""
    spread = (x.max(axis=(1, 2, 3)) - x.min(axis=(1, 2, 3)))[None, :, None, None, None]
    return (np.random.default_rng(seed).standard_normal((samples, *x.shape)) * noise * spread).astype(np.float32)


def _gradients_of(model, images, sign):
    """Gradients of a stack (S, B, H, W, 1) of images, all in one batched pass (chunked)."""
    grads, _ = engine_for(model).input_gradients(images.reshape(-1, *images.shape[2:]), sign)
    return grads.reshape(images.shape)


def input_maps(model, x, method, sign, ig_baseline=IG_BASELINE, seed=0) -> np.ndarray:
    """The map (B, H, W) of an input-space method before the ReLU (saliency and smoothgrad are
    magnitudes, never negative)."""
    if method == "saliency":
        return methods.saliency(engine_for(model).input_gradients(x, sign)[0])
    if method == "smoothgrad":
        return methods.smoothgrad(_gradients_of(model, x[None] + smoothgrad_noise(x, seed=seed), sign))
    if method == "intgrad":
        baseline = baseline_images(x, ig_baseline)
        alphas = methods.integration_points(IG_STEPS)[:, None, None, None, None]
        path = (baseline[None] + alphas * (x - baseline)[None]).astype(np.float32)
        return methods.integrated_gradients(x, baseline, _gradients_of(model, path, sign))
    if method == "occlusion":
        return occlusion_maps(model, x, sign, ig_baseline)
    raise FractureError(f"{method} is not an input-space method ({', '.join(methods.INPUT_METHODS)})")


def occlusion_maps(model, x, sign, fill=IG_BASELINE, window_share=OCCLUSION_WINDOW) -> np.ndarray:
    size = x.shape[1]
    window = max(1, round(window_share * size))
    windows = methods.occlusion_windows(size, window, max(1, window // 2))
    filled = baseline_images(x, fill)
    drops = np.empty((len(x), len(windows)), np.float64)
    score = sign * predict_logits(model, x)
    for i in range(len(x)):
        occluded = np.repeat(x[i:i + 1], len(windows), axis=0)
        for n, (y, c) in enumerate(windows):
            occluded[n, y:y + window, c:c + window] = filled[i, y:y + window, c:c + window]
        drops[i] = score[i] - sign * predict_logits(model, occluded)
    return methods.occlusion(drops, windows, window, size)
