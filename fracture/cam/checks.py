"""Checks a user can fail (layer, method, target, image batch), and the CAM layers offered per backbone.

Each check's message says what to do. `cam_layers` picks the few layers the web app and the run
report explain, deepest first."""

from __future__ import annotations

import numpy as np

from fracture.cam.methods import DEFAULT_METHODS, INPUT_METHODS, METHODS
from fracture.errors import FractureError

# A few sensible CAM layers per backbone family, deepest first; only those present in the model
# are offered. Deep layers localise coarsely but semantically, earlier ones sharper but noisier.
CAM_LAYERS = {
    "DenseNet": ("relu", "pool4_relu", "pool3_relu"),
    "ResNet": ("post_relu", "conv5_block3_out", "conv4_block36_out", "conv4_block23_out",
               "conv4_block6_out", "conv3_block8_out", "conv3_block4_out"),
    "EfficientNet": ("top_activation", "block6a_expand_activation", "block4a_expand_activation"),
    "VGG": ("block5_conv4", "block5_conv3", "block4_conv4", "block4_conv3"),
    "Xception": ("block14_sepconv2_act", "block13_sepconv1_act", "block4_sepconv2_act"),
    "InceptionV3": ("mixed10", "mixed9", "mixed7"),
}
MAX_CAM_LAYERS = 3

TARGETS = {"fracture": 1.0, "normal": -1.0}  # sign applied to the logit
PIXELS = "pixels"  # the layer name under which an input-space method's maps are reported


def method_layers(methods, layers) -> list[tuple[str, str]]:
    """(method, layer) pairs to compute: every layer for a layer method, one (method, PIXELS) for
    an input-space method, which has no layer."""
    return [(m, l) for m in methods for l in ([PIXELS] if m in INPUT_METHODS else layers)]


def spatial_layer(model, name):
    """The layer called `name`, which must output a (B, h, w, C) map."""
    import keras

    try:
        layer = model.get_layer(name)
    except ValueError:
        raise FractureError(f"no layer '{name}' in model {model.name}; some valid names: "
                            f"{', '.join(_suggest(model, name))} "
                            "(all of them: [layer.name for layer in model.layers])") from None
    if isinstance(layer, keras.layers.InputLayer):
        raise FractureError(f"'{name}' is the input layer; pick a layer after it, e.g. {_suggest(model, name)[0]}")
    shape = tuple(layer.output.shape)
    if len(shape) != 4:
        raise FractureError(f"layer '{name}' outputs shape {shape}; CAMs need a (batch, height, width, "
                            f"channels) map, e.g. {', '.join(_suggest(model, name))}")
    return layer


def _suggest(model, name, n=6):
    """Close spellings first, then the usual CAM layers (the last ones with a spatial output)."""
    import difflib

    spatial = [layer.name for layer in model.layers if len(tuple(layer.output.shape)) == 4
               and not layer.name.startswith(("augment_", "image"))]
    close = difflib.get_close_matches(name, spatial, n=3, cutoff=0.5)
    usual = [s for s in spatial if s == "relu" or s.startswith("pool") and s.endswith("_relu")]
    picks = close + usual[::-1] + spatial[::-1]
    return list(dict.fromkeys(picks))[:n]


def check_methods(methods) -> list[str]:
    """The method names, "all" expanded to every method (METHODS) and "default" to
    DEFAULT_METHODS, in order and without repeats."""
    methods = [methods] if isinstance(methods, str) else list(methods)
    groups = {"all": METHODS, "default": DEFAULT_METHODS}
    methods = list(dict.fromkeys(n for m in methods for n in groups.get(m, (m,))))
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise FractureError(f"unknown CAM method {bad or methods}; choose from {', '.join(METHODS)} (or all, default)")
    return methods


def target_sign(target) -> float:
    if target not in TARGETS:
        raise FractureError(f"unknown target '{target}'; use 'fracture' or 'normal'")
    return TARGETS[target]


def as_batch(model, images) -> np.ndarray:
    """(B, H, W, 1) or (B, H, W) raw pixels -> float32 (B, H, W, 1) at the model's input size."""
    x = np.asarray(images, np.float32)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] != 1:
        raise FractureError(f"expected a batch of grayscale images (B, H, W, 1), got shape {x.shape}")
    want = tuple(model.input_shape[1:3])
    if None not in want and x.shape[1:3] != want:
        raise FractureError(f"images are {x.shape[1]}x{x.shape[2]} px but the model takes {want[0]}x{want[1]}; "
                            "resize them first (fracture.data.resize)")
    return x


def cam_layers(model, backbone: str) -> list[str]:
    """Up to MAX_CAM_LAYERS sensible CAM layers present in `model`, deepest first."""
    names = {layer.name for layer in model.layers}
    family = next((k for k in CAM_LAYERS if backbone.startswith(k)), None)
    chosen = [n for n in CAM_LAYERS.get(family, ()) if n in names][:MAX_CAM_LAYERS]
    if not chosen:  # unknown backbone: the last layer with a spatial (4-D) output
        from fracture.model import POOL_LAYER  # here, not at the top: it loads Keras, which this module does not

        spatial = [layer.name for layer in model.layers
                   if layer.name != POOL_LAYER and len(getattr(layer.output, "shape", ())) == 4]
        chosen = spatial[-1:]
    return chosen
