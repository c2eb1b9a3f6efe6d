"""From a layer's activations and gradients to maps at the input resolution.

From a layer's activations and gradients to maps at the input resolution (pytorch-grad-cam's
`base_cam.py`): a method's raw map, then ReLU, bilinear upsampling and per-image [0, 1] scaling (a
constant map gives zeros). The target is the single sigmoid unit's *logit* (the probability
saturates, so its gradient vanishes on confident images); "normal" flips its sign."""

from __future__ import annotations

import numpy as np

from fracture.cam.backend import GRADIENT_CHUNK, chunked, engine_for, predict_logits
from fracture.cam.checks import as_batch, check_methods, target_sign
from fracture.cam.methods import (
    ACTIVATION_METHODS,
    GRADIENT_METHODS,
    INPUT_METHODS,
    ablation_weights,
    collapse,
    scorecam_weights,
)
from fracture.cam.pixels import IG_BASELINE, input_maps
from fracture.errors import FractureError

# Score-CAM scores only the channels of largest spatial standard deviation ("Faster Score-CAM"):
# a flat channel masks the image evenly and says nothing about where. 0 = every channel. How close
# 64 comes to all channels, and ranking by the mean instead: docs/cam.md, "Score-CAM".
SCORECAM_CHANNELS = 64


AUG_FLIPS = (False, True)  # aug_smooth: the image as is and mirrored left-right ...
AUG_FACTORS = (0.9, 1.0, 1.1)  # ... times these pixel-intensity factors (pytorch-grad-cam's ttach set)


def layer_maps(model, images, layer, method="gradcam", target="fracture", relu=True,
               scorecam_channels=SCORECAM_CHANNELS, eigen_smooth=False, aug_smooth=False,
               ig_baseline=IG_BASELINE) -> np.ndarray:
    """Raw maps (B, h, w) at the layer's own resolution, after the ReLU (relu=False: the signed
    map before it, for the sanity checks' absolute-value variant), before upsampling. An
    input-space method ignores `layer` and gives (B, H, W).

    eigen_smooth: the first principal component of the weighted activations instead of their
    channel sum (methods.py). aug_smooth: the mean over AUG_FLIPS x AUG_FACTORS versions of the
    image, each map scaled to [0, 1] (relu) or by its largest magnitude and mirrored back, as
    pytorch-grad-cam; times the versions' mean peak, so the shared panel scale still sees how
    strong the evidence is."""
    x, sign = as_batch(model, images), target_sign(target)
    check_methods([method])
    if aug_smooth:
        return _augmented(lambda xa: layer_maps(model, xa, layer, method, target, relu, scorecam_channels,
                                                eigen_smooth, ig_baseline=ig_baseline), x, relu)
    if method in INPUT_METHODS:
        maps = input_maps(model, x, method, sign, ig_baseline)
    else:
        plumbing = engine_for(model).layer(layer)
        if method == "scorecam":
            maps = _scorecam(model, x, plumbing.activations(x), sign, scorecam_channels)
        elif method == "ablationcam":
            maps = _ablationcam(plumbing, x, sign, eigen_smooth)
        elif method in ACTIVATION_METHODS:
            a = plumbing.activations(x)
            maps = ACTIVATION_METHODS[method](a, None, eigen_smooth)
        else:
            maps, _ = _gradient_maps_and_logits(plumbing, x, sign, method, False, eigen_smooth)
    return (np.maximum(maps, 0) if relu else maps).astype(np.float32)


def _augmented(maps_of, x, relu):
    total, peaks = 0.0, []
    for flip in AUG_FLIPS:
        for factor in AUG_FACTORS:
            version = x[:, :, ::-1] if flip else x
            m = maps_of(np.ascontiguousarray(version * np.float32(factor)))
            peaks.append(np.abs(m).max(axis=(1, 2)))
            if relu:
                m = normalize_maps(m)
            else:
                m = m / np.maximum(np.abs(m).max(axis=(1, 2), keepdims=True), 1e-30)
            total = total + (m[:, :, ::-1] if flip else m)
    mean = total / (len(AUG_FLIPS) * len(AUG_FACTORS))
    return (mean * np.mean(peaks, axis=0)[:, None, None]).astype(np.float32)


def _gradient_maps_and_logits(plumbing, x, sign, method, relu=True, eigen_smooth=False):
    """Raw maps (B, h, w) after the ReLU (unless relu=False) and the logits (B,), from the same
    gradient steps; in chunks, because a backward pass holds every activation of its batch."""

    def step(part):
        a, g, logit = plumbing.gradients(part, sign)
        maps = GRADIENT_METHODS[method](a, g, eigen_smooth)
        return (np.maximum(maps, 0) if relu else maps), logit.reshape(-1)

    return chunked(step, x, GRADIENT_CHUNK)


def _ablationcam(plumbing, x, sign, eigen_smooth=False):
    """Each channel of the layer set to zero in turn (pytorch-grad-cam's AblationLayer on a
    layer after a ReLU), the head run on the edited activations, batched: C head passes per
    image. Channel weights: `ablation_weights`."""
    a = plumbing.activations(x)
    scores = sign * plumbing.head_logits(x, a)
    channels, group = a.shape[-1], 128  # edited copies held at once: bounds memory on wide layers
    cams = []
    for i in range(len(x)):
        ablated = []
        for start in range(0, channels, group):
            index = np.arange(start, min(start + group, channels))
            edited = np.repeat(a[i:i + 1], len(index), axis=0)
            edited[np.arange(len(index)), :, :, index] = 0
            ablated.append(sign * plumbing.head_logits(np.repeat(x[i:i + 1], len(index), axis=0), edited))
        weights = ablation_weights(scores[i], np.concatenate(ablated))
        cams.append(collapse(a[i:i + 1] * weights[None, None, None, :].astype(np.float32), eigen_smooth)[0])
    return np.stack(cams)


def maps_and_logits(model, images, layer, method="gradcam", target="fracture") -> tuple[np.ndarray, np.ndarray]:
    """[0, 1] maps (B, H, W) of a gradient method on one layer, and the model's logits (B,), from
    the same pass: the gradient step computes the logit anyway, so a caller that also wants the
    prediction (the web app) pays for one pass, not two. The maps equal `cam_maps(...)[layer]`."""
    x, sign = as_batch(model, images), target_sign(target)
    check_methods([method])
    if method not in GRADIENT_METHODS:
        raise FractureError(f"{method} takes no gradient step; maps_and_logits serves {', '.join(GRADIENT_METHODS)}")
    raw, logits = _gradient_maps_and_logits(engine_for(model).layer(layer), x, sign, method)
    return normalize_maps(upsample(raw, x.shape[1:3])), logits


def scorecam_channels_of(act, max_channels=SCORECAM_CHANNELS, rank_by="std") -> np.ndarray:
    """Indices of the channels Score-CAM scores for one image's activations (h, w, C): the
    `max_channels` of largest spatial standard deviation (rank_by="mean": largest mean, the
    earlier choice), all of them when max_channels is 0 or at least C."""
    if not max_channels or max_channels >= act.shape[-1]:
        return np.arange(act.shape[-1])
    statistic = {"std": np.std, "mean": np.mean}[rank_by](act, axis=(0, 1))
    return np.argsort(-statistic, kind="stable")[:max_channels]


def _scorecam(model, x, a, sign, max_channels=SCORECAM_CHANNELS, rank_by="std"):
    """Weights = softmax over channels of sign*logit(image * channel mask), as pytorch-grad-cam.
    The masked images of one image go through the model in compiled-size chunks (batched)."""
    size = x.shape[1:3]
    cams = []
    for image, act in zip(x, a):
        channels = scorecam_channels_of(act, max_channels, rank_by)
        masks = normalize_maps(upsample(np.moveaxis(act[:, :, channels], -1, 0), size))
        scores = sign * predict_logits(model, image[None] * masks[..., None])
        cams.append(act[:, :, channels] @ scorecam_weights(scores))
    return np.stack(cams)


def upsample(maps, size) -> np.ndarray:
    """(B, h, w) -> (B, H, W) by bilinear interpolation (the maps are smooth, not labels)."""
    import cv2

    h, w = size
    if maps.shape[1:] == (h, w):
        return maps.astype(np.float32)
    return np.stack([cv2.resize(m.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) for m in maps])


def normalize_maps(maps, rtol=1e-5) -> np.ndarray:
    """Per-map min-max scaling to [0, 1]; a constant map (no signal) becomes zeros, never NaN.

    "Constant" is relative to the map's own scale: a spread below `rtol` times its largest
    magnitude is float rounding (e.g. a 1x1 map upsampled by a CPU-specific SIMD path comes back
    as v and v + 1 ulp), and stretching that to [0, 1] would paint noise as signal.
    """
    maps = np.asarray(maps, np.float32)
    lo = maps.min(axis=(-2, -1), keepdims=True)
    hi = maps.max(axis=(-2, -1), keepdims=True)
    span = (hi - lo).astype(np.float64)
    scale = np.maximum(np.abs(lo), np.abs(hi)).astype(np.float64)
    signal = span > rtol * scale + np.finfo(np.float32).tiny
    scaled = (maps - lo) / np.where(signal, span, 1.0)
    return np.where(signal, scaled, 0.0).astype(np.float32)


def cam_maps(model, images, layers, method="gradcam", target="fracture", normalize=True, average=False,
             scorecam_channels=SCORECAM_CHANNELS, eigen_smooth=False, aug_smooth=False,
             ig_baseline=IG_BASELINE) -> dict:
    """{layer: (B, H, W) float32} maps at the input resolution for raw-pixel images (B, H, W, 1).

    normalize=True scales each map to [0, 1]; False keeps the raw (non-negative) values. With
    average=True the key "average" holds the mean of the layers' [0, 1] maps (scaled first, so no
    layer wins by its magnitude), rescaled when normalize=True. `scorecam_channels`: how many
    channels Score-CAM scores (0 = all; module constant SCORECAM_CHANNELS). eigen_smooth,
    aug_smooth: see `layer_maps`. An input-space method (methods.INPUT_METHODS) has no layer: it
    is computed once and the same maps stand under every layer's key. ig_baseline: the baseline
    of Integrated Gradients and the fill of occlusion (pixels.IG_BASELINES).
    """
    layers = [layers] if isinstance(layers, str) else list(layers)
    x = as_batch(model, images)
    out, pixel_maps = {}, None
    for name in layers:
        if method in INPUT_METHODS and pixel_maps is not None:
            maps = pixel_maps
        else:
            maps = upsample(layer_maps(model, x, name, method, target, scorecam_channels=scorecam_channels,
                                       eigen_smooth=eigen_smooth, aug_smooth=aug_smooth, ig_baseline=ig_baseline),
                            x.shape[1:3])
            pixel_maps = maps if method in INPUT_METHODS else None
        out[name] = normalize_maps(maps) if normalize else maps
    if average:
        mean = np.mean([normalize_maps(out[name]) for name in layers], axis=0)
        out["average"] = normalize_maps(mean) if normalize else mean.astype(np.float32)
    return out
