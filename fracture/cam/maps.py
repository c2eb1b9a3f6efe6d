"""From a layer's activations and gradients to maps at the input resolution.

From a layer's activations and gradients to maps at the input resolution (pytorch-grad-cam's
`base_cam.py`): a method's raw map, then ReLU, bilinear upsampling and per-image [0, 1] scaling (a
constant map gives zeros). The target is the single sigmoid unit's *logit* (the probability
saturates, so its gradient vanishes on confident images); "normal" flips its sign."""

from __future__ import annotations

import numpy as np

from fracture.cam.backend import GRADIENT_CHUNK, chunked, engine_for, predict_logits
from fracture.cam.checks import as_batch, check_methods, target_sign
from fracture.cam.methods import GRADIENT_METHODS, scorecam_weights
from fracture.errors import FractureError

# Score-CAM scores only the channels of largest spatial standard deviation ("Faster Score-CAM"):
# a flat channel masks the image evenly and says nothing about where. 0 = every channel. How close
# 64 comes to all channels, and ranking by the mean instead: docs/cam.md, "Score-CAM".
SCORECAM_CHANNELS = 64


def layer_maps(model, images, layer, method="gradcam", target="fracture", relu=True,
               scorecam_channels=SCORECAM_CHANNELS) -> np.ndarray:
    """Raw maps (B, h, w) at the layer's own resolution, after the ReLU (relu=False: the signed
    map before it, for the sanity checks' absolute-value variant), before upsampling."""
    x, sign = as_batch(model, images), target_sign(target)
    check_methods([method])
    plumbing = engine_for(model).layer(layer)
    if method == "scorecam":
        maps = _scorecam(model, x, plumbing.activations(x), sign, scorecam_channels)
    else:
        maps, _ = _gradient_maps_and_logits(plumbing, x, sign, method, relu)
    return (np.maximum(maps, 0) if relu else maps).astype(np.float32)


def _gradient_maps_and_logits(plumbing, x, sign, method, relu=True):
    """Raw maps (B, h, w) after the ReLU (unless relu=False) and the logits (B,), from the same
    gradient steps; in chunks, because a backward pass holds every activation of its batch."""

    def step(part):
        a, g, logit = plumbing.gradients(part, sign)
        maps = GRADIENT_METHODS[method](a, g)
        return (np.maximum(maps, 0) if relu else maps), logit.reshape(-1)

    return chunked(step, x, GRADIENT_CHUNK)


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
             scorecam_channels=SCORECAM_CHANNELS) -> dict:
    """{layer: (B, H, W) float32} maps at the input resolution for raw-pixel images (B, H, W, 1).

    normalize=True scales each map to [0, 1]; False keeps the raw (non-negative) values. With
    average=True the key "average" holds the mean of the layers' [0, 1] maps (scaled first, so no
    layer wins by its magnitude), rescaled when normalize=True. `scorecam_channels`: how many
    channels Score-CAM scores (0 = all; module constant SCORECAM_CHANNELS).
    """
    layers = [layers] if isinstance(layers, str) else list(layers)
    x = as_batch(model, images)
    out = {}
    for name in layers:
        maps = upsample(layer_maps(model, x, name, method, target, scorecam_channels=scorecam_channels),
                        x.shape[1:3])
        out[name] = normalize_maps(maps) if normalize else maps
    if average:
        mean = np.mean([normalize_maps(out[name]) for name in layers], axis=0)
        out["average"] = normalize_maps(mean) if normalize else mean.astype(np.float32)
    return out
