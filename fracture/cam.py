"""Class activation maps on any layer, on the TensorFlow, JAX and PyTorch backends.

The shape follows pytorch-grad-cam: one piece of plumbing per (model, layer) returns the layer's
activations A (B, h, w, C) and the gradients G of the target score with respect to them; each
method only turns (A, G) into a map:

    gradcam    sum_c mean_hw(G_c) A_c                    (Selvaraju et al. 2017)
    gradcampp  like gradcam, positive gradients weighted by alpha = G^2 / (2G^2 + sum_hw(A) G^3)
    layercam   sum_c relu(G_c) * A_c, pixel by pixel     (Jiang et al. 2021; good on early layers)
    hirescam   sum_c G_c * A_c, pixel by pixel           (Draelos & Carin 2020)
    scorecam   gradient-free: channel weights = softmax over channels of the target score of the
               image masked by each (upsampled, [0,1]-scaled) channel   (Wang et al. 2020)

then ReLU, upsampling to the input resolution and per-image [0,1] scaling (a constant map gives
zeros). The target is the single sigmoid unit's *logit* (the probability saturates, so its
gradient vanishes on confident images); "normal" flips its sign.

Gradients with respect to an inner layer: `keras.Model([model.input, layer.output], logit)` turns
the activation into an input while skip paths (DenseNet's concatenations) still come from the
image; `keras.Model(model.input, layer.output)` gives the activation itself. `_backend_functions`
holds the only backend-specific code. Both sub-models and the compiled step are cached per
(model, layer), so the web app pays the compile once.

Proof that the maps mean something: `evaluate_localization` scores them against the synthetic
data's fracture boxes (pointing game, energy in box) and by deletion/insertion curves, each
against a random map; see docs/cam.md.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
import weakref
from pathlib import Path

import numpy as np

from fracture.errors import DataError, FractureError
from fracture.fileio import atomic_path

log = logging.getLogger(__name__)

TARGETS = {"fracture": 1.0, "normal": -1.0}  # sign applied to the logit
SCORECAM_CHANNELS = 64  # Score-CAM uses the most active channels only ("Faster Score-CAM")
EVAL_COLUMNS = ["method", "layer", "pointing_game", "energy_in_box", "deletion_auc", "insertion_auc", "n_images"]
CHUNK = 32  # images per compiled forward call (one shape, so JAX compiles once)
GRADIENT_CHUNK = 16  # images per gradient call: bounds the memory a backward pass holds
RANDOM_DRAWS = 50  # random maps per image behind the random baseline's pointing game and energy


# --------------------------------------------------------------------------------------------
# the methods: (activations, gradients) -> map before ReLU, each (B, h, w, C) -> (B, h, w)
# --------------------------------------------------------------------------------------------
def _weighted(a, weights):
    return np.einsum("bhwc,bc->bhw", a, weights)


def _gradcam(a, g):
    return _weighted(a, g.mean(axis=(1, 2)))


def _gradcampp(a, g):
    g2, g3 = g * g, g * g * g
    denom = 2 * g2 + a.sum(axis=(1, 2), keepdims=True) * g3
    # Only positive gradients carry weight below, and there denom > 0 for non-negative activations;
    # the guard keeps a signed layer (e.g. a conv before its ReLU) from dividing by zero.
    alpha = np.divide(g2, denom, out=np.zeros_like(g), where=(g > 0) & (denom > 0))
    return _weighted(a, (np.maximum(g, 0) * alpha).sum(axis=(1, 2)))


def _layercam(a, g):
    return (np.maximum(g, 0) * a).sum(axis=-1)


def _hirescam(a, g):
    return (g * a).sum(axis=-1)


GRADIENT_METHODS = {"gradcam": _gradcam, "gradcampp": _gradcampp, "layercam": _layercam, "hirescam": _hirescam}
METHODS = (*GRADIENT_METHODS, "scorecam")


# --------------------------------------------------------------------------------------------
# plumbing: sub-models and the one backend-specific gradient function, cached per (model, layer)
# --------------------------------------------------------------------------------------------
def _backend_functions(activation_model, head):
    """(activations, gradients) for this backend, both taking float32 images (B, H, W, 1):
    activations(x) -> A, and gradients(x, sign) -> (A, dScore/dA, logits), as NumPy.

    Score = sign * sum over the batch of the logits: every image's logit depends on its own
    activations only (inference mode), so one backward pass gives every image's gradient.
    """
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        # Traced once per layer, for any batch size; later calls skip Python.
        signature = [tf.TensorSpec(activation_model.inputs[0].shape, tf.float32), tf.TensorSpec((), tf.float32)]

        @tf.function(input_signature=signature)
        def gradients(x, sign):
            a = activation_model(x, training=False)
            with tf.GradientTape() as tape:
                tape.watch(a)
                logit = head([x, a], training=False)
                score = sign * tf.reduce_sum(logit)
            return a, tape.gradient(score, a), logit

        def activations(x):  # eager: one forward costs less than tracing one
            return activation_model(x, training=False)

    elif backend == "jax":
        import jax
        import jax.numpy as jnp

        def values(m):  # read at every call, so the maps follow weights that change
            return [v.value for v in m.trainable_variables], [v.value for v in m.non_trainable_variables]

        def score(a, x, sign, head_vars):
            logit, _ = head.stateless_call(*head_vars, [x, a], training=False)
            return sign * jnp.sum(logit), logit

        # Jitted over stateless_call: eager jax.grad through DenseNet121 took minutes (STYLE.md).
        @jax.jit
        def grad_step(act_vars, head_vars, x, sign):
            a, _ = activation_model.stateless_call(*act_vars, x, training=False)
            (_, logit), grads = jax.value_and_grad(score, has_aux=True)(a, x, sign, head_vars)
            return a, grads, logit

        forward = jax.jit(lambda act_vars, x: activation_model.stateless_call(*act_vars, x, training=False)[0])

        def gradients(x, sign):
            return grad_step(values(activation_model), values(head), x, np.float32(sign))

        def activations(x):
            return forward(values(activation_model), x)

    elif backend == "torch":
        import torch

        def gradients(x, sign):
            x = keras.ops.convert_to_tensor(x)
            with torch.no_grad():
                a = activation_model(x, training=False)
            a = a.detach().requires_grad_(True)
            logit = head([x, a], training=False)
            (grads,) = torch.autograd.grad(sign * logit.sum(), a)
            return a.detach(), grads, logit.detach()

        def activations(x):
            with torch.no_grad():
                return activation_model(keras.ops.convert_to_tensor(x), training=False)

    else:
        raise FractureError(f"CAMs support the tensorflow, jax and torch backends, not '{backend}'")

    def numpy(t):
        return np.asarray(keras.ops.convert_to_numpy(t), np.float32)

    return (lambda x: numpy(activations(np.asarray(x, np.float32))),
            lambda x, sign: tuple(numpy(t) for t in gradients(np.asarray(x, np.float32), float(sign))))


class _Plumbing:
    """For one (model, layer): the activation model, the head model and the compiled gradient step."""

    def __init__(self, model, layer):
        import keras

        self.activation_model = keras.Model(model.inputs[0], layer.output)
        self.head = keras.Model([model.inputs[0], layer.output], _logit_tensor(model))
        self._activations, self.step = _backend_functions(self.activation_model, self.head)

    def activations(self, x):
        return _chunked(self._activations, x)


_CACHE = weakref.WeakKeyDictionary()  # model -> {layer name or "logit": _Plumbing or logit model}
_CACHE_LOCK = threading.Lock()  # the web app may ask from several threads


def _cached(model, key, build):
    with _CACHE_LOCK:
        per_model = _CACHE.setdefault(model, {})
        if key not in per_model:
            per_model[key] = build()
        return per_model[key]


def _plumbing(model, layer_name) -> _Plumbing:
    layer = spatial_layer(model, layer_name)
    return _cached(model, layer.name, lambda: _Plumbing(model, layer))


def _logit_tensor(model):
    """The pre-sigmoid output: our models name it `logit`; else the input of a final sigmoid."""
    names = {layer.name for layer in model.layers}
    if "logit" in names:
        return model.get_layer("logit").output
    last = model.layers[-1]
    if getattr(last, "activation", None) is not None and getattr(last.activation, "__name__", "") == "sigmoid":
        if hasattr(last, "kernel"):
            raise FractureError(f"model {model.name}: the logit is inside Dense layer '{last.name}'; "
                                "build it as Dense(1) named 'logit' followed by a sigmoid Activation")
        return last.input
    raise FractureError(f"model {model.name} has no layer named 'logit' (the pre-sigmoid output)")


def _logit_model(model):
    import keras

    return _cached(model, ("logit",), lambda: keras.Model(model.inputs[0], _logit_tensor(model)))


def _chunked(fn, x, chunk=CHUNK):
    """fn over x in chunks; when x needs several chunks the last is padded so every call has the
    same shape (one JAX compilation, one TensorFlow trace). fn may return a tuple of per-image
    arrays; each is then concatenated on its own."""
    out = []
    for start in range(0, len(x), chunk):
        part = x[start:start + chunk]
        n = len(part)
        if n < chunk and len(x) > chunk:
            part = np.concatenate([part, np.repeat(part[-1:], chunk - n, axis=0)])
        result = fn(part)
        out.append([np.asarray(r, np.float32)[:n] for r in (result if isinstance(result, tuple) else (result,))])
    joined = tuple(np.concatenate(column) for column in zip(*out))
    return joined if isinstance(result, tuple) else joined[0]


def predict_logits(model, images) -> np.ndarray:
    """Logits (B,) of raw-pixel images, inference mode (augmentation off)."""
    return _chunked(_logit_model(model).predict_on_batch, _as_batch(model, images)).reshape(-1)


# --------------------------------------------------------------------------------------------
# checks a user can fail
# --------------------------------------------------------------------------------------------
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
    methods = [methods] if isinstance(methods, str) else list(methods)
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise FractureError(f"unknown CAM method {bad or methods}; choose from {', '.join(METHODS)}")
    return methods


def _sign(target) -> float:
    if target not in TARGETS:
        raise FractureError(f"unknown target '{target}'; use 'fracture' or 'normal'")
    return TARGETS[target]


def _as_batch(model, images) -> np.ndarray:
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


# --------------------------------------------------------------------------------------------
# maps
# --------------------------------------------------------------------------------------------
def layer_maps(model, images, layer, method="gradcam", target="fracture") -> np.ndarray:
    """Raw maps (B, h, w) at the layer's own resolution, after the ReLU, before upsampling."""
    x, sign = _as_batch(model, images), _sign(target)
    check_methods([method])
    plumbing = _plumbing(model, layer)
    if method == "scorecam":
        maps = _scorecam(model, x, plumbing.activations(x), sign)
    else:
        maps, _ = _gradient_maps_and_logits(plumbing, x, sign, method)
    return np.maximum(maps, 0).astype(np.float32)


def _gradient_maps_and_logits(plumbing, x, sign, method):
    """Raw maps (B, h, w) after the ReLU and the logits (B,), from the same gradient steps; in
    chunks, because a backward pass holds every activation of its batch."""

    def step(part):
        a, g, logit = plumbing.step(part, sign)
        return np.maximum(GRADIENT_METHODS[method](a, g), 0), logit.reshape(-1)

    return _chunked(step, x, GRADIENT_CHUNK)


def maps_and_logits(model, images, layer, method="gradcam", target="fracture") -> tuple[np.ndarray, np.ndarray]:
    """[0, 1] maps (B, H, W) of a gradient method on one layer, and the model's logits (B,), from
    the same pass: the gradient step computes the logit anyway, so a caller that also wants the
    prediction (the web app) pays for one pass, not two. The maps equal `cam_maps(...)[layer]`."""
    x, sign = _as_batch(model, images), _sign(target)
    check_methods([method])
    if method not in GRADIENT_METHODS:
        raise FractureError(f"{method} takes no gradient step; maps_and_logits serves {', '.join(GRADIENT_METHODS)}")
    raw, logits = _gradient_maps_and_logits(_plumbing(model, layer), x, sign, method)
    return normalize_maps(upsample(raw, x.shape[1:3])), logits


def _scorecam(model, x, a, sign, max_channels=SCORECAM_CHANNELS):
    """Weights = softmax over channels of sign*logit(image * channel mask), as pytorch-grad-cam."""
    size = x.shape[1:3]
    cams = []
    for image, act in zip(x, a):
        channels = np.argsort(-act.mean(axis=(0, 1)), kind="stable")[:max_channels]
        masks = normalize_maps(upsample(np.moveaxis(act[:, :, channels], -1, 0), size))
        scores = sign * predict_logits(model, image[None] * masks[..., None])
        weights = np.exp(scores - scores.max())
        cams.append(act[:, :, channels] @ (weights / weights.sum()))
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


def cam_maps(model, images, layers, method="gradcam", target="fracture", normalize=True, average=False) -> dict:
    """{layer: (B, H, W) float32} maps at the input resolution for raw-pixel images (B, H, W, 1).

    normalize=True scales each map to [0, 1]; False keeps the raw (non-negative) values. With
    average=True the key "average" holds the mean of the layers' [0, 1] maps (scaled first, so no
    layer wins by its magnitude), rescaled when normalize=True.
    """
    layers = [layers] if isinstance(layers, str) else list(layers)
    x = _as_batch(model, images)
    out = {}
    for name in layers:
        maps = upsample(layer_maps(model, x, name, method, target), x.shape[1:3])
        out[name] = normalize_maps(maps) if normalize else maps
    if average:
        mean = np.mean([normalize_maps(out[name]) for name in layers], axis=0)
        out["average"] = normalize_maps(mean) if normalize else mean.astype(np.float32)
    return out


# --------------------------------------------------------------------------------------------
# pictures: overlays, feature grids, panels
# --------------------------------------------------------------------------------------------
def _colormap(name):
    import matplotlib

    try:
        return matplotlib.colormaps[name]
    except KeyError:
        raise FractureError(f"unknown colormap '{name}'; use a matplotlib name such as jet, turbo, inferno") from None


def overlay(gray, heatmap, colormap="jet", alpha=0.4) -> np.ndarray:
    """RGB uint8 at gray's size: (1 - alpha) * gray + alpha * colormap(heatmap).

    gray: (H, W) or (H, W, 1) pixels 0..255; heatmap: values in [0, 1], any size (resized).
    """
    import cv2

    gray = np.asarray(gray, np.float32)
    gray = gray[..., 0] if gray.ndim == 3 else gray
    heat = np.asarray(heatmap, np.float32)
    heat = heat[..., 0] if heat.ndim == 3 else heat
    if heat.shape != gray.shape:
        heat = cv2.resize(heat, (gray.shape[1], gray.shape[0]), interpolation=cv2.INTER_LINEAR)
    colored = _colormap(colormap)(np.clip(heat, 0, 1))[..., :3] * 255.0
    mixed = (1 - alpha) * gray[..., None] + alpha * colored
    return np.clip(mixed + 0.5, 0, 255).astype(np.uint8)


def feature_grid(model, image, layer, max_channels=64, tile=48, colormap="viridis") -> np.ndarray:
    """RGB uint8 grid of a layer's channels for one image (H, W, 1): the `max_channels` most active
    channels in channel order, each scaled to [0, 1] on its own and enlarged to at least `tile` px."""
    import cv2

    x = _as_batch(model, np.asarray(image)[None] if np.ndim(image) in (2, 3) else image)[:1]
    act = _plumbing(model, layer).activations(x)[0]
    h, w, channels = act.shape
    keep = np.sort(np.argsort(-act.mean(axis=(0, 1)), kind="stable")[:max_channels])
    scale = max(1, math.ceil(tile / max(h, w)))
    tiles = normalize_maps(np.moveaxis(act[:, :, keep], -1, 0))
    tiles = [cv2.resize(t, (w * scale, h * scale), interpolation=cv2.INTER_NEAREST) for t in tiles]
    cols = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    gap, th, tw = 2, h * scale, w * scale
    grid = np.ones((rows * (th + gap) - gap, cols * (tw + gap) - gap, 3), np.uint8) * 255
    cmap = _colormap(colormap)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        grid[r * (th + gap):r * (th + gap) + th, c * (tw + gap):c * (tw + gap) + tw] = \
            (cmap(t)[..., :3] * 255 + 0.5).astype(np.uint8)
    log.debug("feature grid of %s: %d of %d channels, %dx%d each", layer, len(keep), channels, h, w)
    return grid


def image_stem(path) -> str:
    """Folder name for an image: MURA names every file image1.png, so its patient and study go in."""
    path = Path(path)
    study, patient = path.parent.name, path.parent.parent.name
    if re.fullmatch(r"study\d+_(positive|negative)", study) and patient.startswith("patient"):
        return f"{patient}_{study}_{path.stem}"
    return path.stem


def _boxes_by_path(cfg) -> dict:
    """{resolved image path: (x0, y0, x1, y1)} from the run's synthetic fracture_boxes.csv;
    DataError when the data has none (real MURA, class folders)."""
    from fracture.data import find_mura_root
    from fracture.synth import load_boxes

    boxes = load_boxes(find_mura_root(cfg.data_dir))
    return {str(Path(p).resolve()): (x0, y0, x1, y1)
            for p, x0, y0, x1, y1 in boxes[["path", "x0", "y0", "x1", "y1"]].itertuples(index=False)}


def _known_boxes(cfg) -> dict:
    try:
        return _boxes_by_path(cfg)
    except DataError:
        return {}


def render(run, paths, layers, methods, out_dir="layer_outputs", target="fracture") -> list[Path]:
    """Overlays, feature grids and one panel per image in out_dir/<run.name>/<image-stem>/.

    Files: `<method>__<layer>.png` (overlay on the original image at its own resolution),
    `features__<layer>.png` (channel grid) and `panel.png` (original with the prediction, then one
    overlay per layer and method). Returns the written paths.
    """
    from fracture.data import resize
    from fracture.imageio import read_gray

    layers = [layers] if isinstance(layers, str) else list(layers)
    methods = check_methods(methods)
    model, size = run.model, run.model.input_shape[1]
    for name in layers:
        spatial_layer(model, name)
    originals, stems = [], {}
    for p in map(Path, paths):
        try:
            originals.append((p, read_gray(p, run.config.max_pixels)))
        except FractureError as exc:
            log.warning("skipping %s: %s", p, exc)
    if not originals:
        return []
    x = np.stack([resize(g, size) for _, g in originals])[..., None].astype(np.float32)
    probabilities = 1 / (1 + np.exp(-predict_logits(model, x)))
    maps = {m: cam_maps(model, x, layers, m, target) for m in methods}
    boxes = _known_boxes(run.config)
    written = []
    for i, (path, gray) in enumerate(originals):
        stem = image_stem(path)
        stems[stem] = stems.get(stem, 0) + 1
        folder = Path(out_dir) / run.name / (stem if stems[stem] == 1 else f"{stem}-{stems[stem]}")
        folder.mkdir(parents=True, exist_ok=True)
        tiles = []
        for layer in layers:
            for method in methods:
                picture = overlay(gray, maps[method][layer][i])
                written.append(_write_png(folder / f"{method}__{layer}.png", picture))
                tiles.append((f"{method} · {layer}", picture))
            written.append(_write_png(folder / f"features__{layer}.png", feature_grid(model, x[i], layer)))
        written.append(_panel(folder / "panel.png", gray, tiles, probabilities[i], run.config.threshold,
                              target, boxes.get(str(path.resolve()))))
        log.info("%s: p(fracture)=%.3f -> %s", path, probabilities[i], folder)
    # One folder per image: handed over as folders, they land in MLflow as cam/<image-stem>/...
    # (the file names repeat from image to image).
    _log_to_mlflow(run, sorted({p.parent for p in written}))
    return written


def _write_png(path: Path, rgb) -> Path:
    import cv2

    image = rgb if rgb.ndim == 2 else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), image):
        raise FractureError(f"cannot write {path}")
    return path


def _panel(path, gray, tiles, probability, threshold, target, box) -> Path:
    """Original (with the true box when known) and its prediction, then the overlays, in a grid."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    n = 1 + len(tiles)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(3 * cols, 3.3 * rows))
    FigureCanvasAgg(fig)  # a figure of its own, no pyplot state: safe in the web app's threads
    verdict = "abnormal" if probability > threshold else "normal"
    panels = [(f"p(fracture) = {probability:.3f}\n{verdict}", gray)] + tiles
    for k, (title, picture) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=255)
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
        if box is not None:
            x0, y0, x1, y1 = box
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                                   edgecolor="white" if k else "lime", linewidth=1, linestyle="--"))
    fig.suptitle(f"target: {target}" + ("   (dashed: true fracture box)" if box is not None else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)


def _log_to_mlflow(run, paths) -> None:
    """Hand the files to the MLflow module when the run is tracked and that module offers it."""
    if not paths or not (Path(run.path) / "mlflow_run_id.txt").is_file():
        return
    import importlib

    try:
        tracking = importlib.import_module("fracture.tracking")
    except ImportError:  # the MLflow module has not landed yet
        return
    log_artifacts = getattr(tracking, "log_artifacts", None)
    if log_artifacts is None:
        return
    try:
        log_artifacts(run.path, paths, artifact_path="cam")
    except Exception as exc:  # the maps are on disk already; tracking must not lose them
        log.warning("could not log CAM files to MLflow: %s", exc)


# --------------------------------------------------------------------------------------------
# proof: localization against the synthetic boxes, faithfulness by deletion / insertion
# --------------------------------------------------------------------------------------------
def pointing_game(maps, boxes) -> np.ndarray:
    """1 where a map's maximum (first one on ties) lies in its box (x0, y0, x1, y1; x1/y1 exclusive)."""
    flat = np.asarray(maps).reshape(len(maps), -1).argmax(axis=1)
    ys, xs = np.unravel_index(flat, np.asarray(maps).shape[1:])
    b = np.asarray(boxes)
    return ((b[:, 0] <= xs) & (xs < b[:, 2]) & (b[:, 1] <= ys) & (ys < b[:, 3])).astype(np.float32)


def energy_in_box(maps, boxes) -> np.ndarray:
    """Share of each map's total inside its box (0 for an all-zero map)."""
    out = []
    for m, (x0, y0, x1, y1) in zip(np.asarray(maps, np.float64), boxes):
        total = m.sum()
        out.append(m[y0:y1, x0:x1].sum() / total if total > 0 else 0.0)
    return np.asarray(out, np.float32)


def oracle_scores(boxes, size, grid) -> tuple[float, float]:
    """Pointing game and energy in box of the boxes themselves seen through a layer's `grid`
    (h, w): each box averaged into the grid's cells, upsampled and scaled like a CAM. What a
    perfect localiser at that resolution shows; the synthetic boxes are smaller than a cell of the
    deepest layers, so there even a perfect map scores well below 1."""
    import cv2

    h, w = grid
    low = []
    for x0, y0, x1, y1 in boxes:
        mask = np.zeros((size, size), np.float32)
        mask[y0:y1, x0:x1] = 1
        low.append(cv2.resize(mask, (w, h), interpolation=cv2.INTER_AREA))
    maps = normalize_maps(upsample(np.stack(low), (size, size)))
    return float(pointing_game(maps, boxes).mean()), float(energy_in_box(maps, boxes).mean())


def scale_box(box, shape, size) -> tuple[int, int, int, int]:
    """A box in an (H, W) original -> pixels of the size x size model input (plain stretch, as
    fracture.data.resize), rounded outwards and at least one pixel wide."""
    (x0, y0, x1, y1), (h, w) = box, shape
    sx, sy = size / w, size / h
    nx0, ny0 = min(size - 1, int(math.floor(x0 * sx))), min(size - 1, int(math.floor(y0 * sy)))
    nx1, ny1 = min(size, max(nx0 + 1, int(math.ceil(x1 * sx)))), min(size, max(ny0 + 1, int(math.ceil(y1 * sy))))
    return nx0, ny0, nx1, ny1


def deletion_insertion(model, images, maps, steps=16, target="fracture", blur=0.04, seed=0):
    """Areas under the deletion and insertion curves per image (Petsiuk et al. 2018, RISE).

    Pixels are ranked by the map (ties broken at random, so a flat map is a random ordering).
    Deletion replaces the top k% with a blurred copy of the image and watches p(target) fall
    (lower area = better); insertion starts from the blurred copy and restores the top k% (higher
    = better). A blur rather than black: black pixels inside a bone draw dark lines, which is what
    a crack looks like, so zeroing could *raise* p(fracture). The blur's sigma is `blur` times
    the image side (5 px at 128 px, wider than the synthetic cracks' 2-4 px gap); the evidence
    must be finer than that for the fully blurred image to carry none.
    """
    import cv2

    x = _as_batch(model, images)
    b, h, w, _ = x.shape
    fractions = np.linspace(0, 1, steps + 1)
    counts = np.round(fractions * h * w).astype(int)
    sigma = blur * max(h, w)
    rng = np.random.default_rng(seed)
    variants = np.empty((b, 2, steps + 1, h, w, 1), np.float32)
    for i in range(b):
        blurred = cv2.GaussianBlur(x[i, :, :, 0], (0, 0), sigma)[..., None]
        order = np.lexsort((rng.random(h * w), -np.asarray(maps[i], np.float64).ravel()))
        rank = np.empty(h * w, np.int64)
        rank[order] = np.arange(h * w)
        rank = rank.reshape(h, w, 1)
        for s, k in enumerate(counts):
            top = rank < k
            variants[i, 0, s] = np.where(top, blurred, x[i])
            variants[i, 1, s] = np.where(top, x[i], blurred)
    logits = predict_logits(model, variants.reshape(-1, h, w, 1)).reshape(b, 2, steps + 1)
    p = 1 / (1 + np.exp(-_sign(target) * logits))
    area = np.trapezoid(p, fractions, axis=-1)
    return area[:, 0].astype(np.float32), area[:, 1].astype(np.float32)


def _positives_with_boxes(run, limit=0, split="test"):
    """Positive images of one split of the run's synthetic data: (paths, images at model size, boxes)."""
    from fracture.data import load_index, resize
    from fracture.imageio import read_gray

    cfg = run.config
    try:
        box_of = _boxes_by_path(cfg)
    except DataError as exc:
        raise FractureError(f"--evaluate needs fracture boxes, which only synthetic data has (python -m "
                            f"fracture synth); run {run.name} uses data_dir={cfg.data_dir}: {exc}") from None
    frame = load_index(cfg)
    paths = [p for p in frame.loc[(frame["split"] == split) & (frame["label"] == 1), "path"]]
    missing = [p for p in paths if str(Path(p).resolve()) not in box_of]
    if missing:
        log.warning("%d positive %s images have no box and are left out (e.g. %s)", len(missing), split,
                    missing[0])
    paths = [p for p in paths if str(Path(p).resolve()) in box_of]
    if limit:
        paths = paths[:limit]
    if not paths:
        raise FractureError(f"no positive {split} images with boxes in {cfg.data_dir}")
    size = run.model.input_shape[1]
    images, scaled = [], []
    for p in paths:
        gray = read_gray(p, cfg.max_pixels)
        images.append(resize(gray, size))
        scaled.append(scale_box(box_of[str(Path(p).resolve())], gray.shape, size))
    return paths, np.stack(images)[..., None].astype(np.float32), np.asarray(scaled)


def evaluate_localization(run, methods, layers, limit=0, steps=16, batch_size=16, split="test"):
    """Pointing game, energy in box and deletion/insertion AUCs per method and layer over the
    positive images of one split of a synthetic run (default test = MURA's `valid` folder, which
    played no part in training or picking the epoch), plus a random-map baseline (method=random);
    written to <run>/cam_eval.csv."""
    import pandas as pd

    methods = check_methods(methods)
    layers = [layers] if isinstance(layers, str) else list(layers)
    for name in layers:
        spatial_layer(run.model, name)
    _, x, boxes = _positives_with_boxes(run, limit, split)
    log.info("CAM evaluation of %s on %d positive %s images", run.name, len(x), split)

    def score(method, layer, maps, redraw=None):
        """One table row; `redraw()` gives more maps to average pointing and energy over."""
        started = time.perf_counter()
        deletion, insertion = [], []
        for i in range(0, len(x), batch_size):
            d, ins = deletion_insertion(run.model, x[i:i + batch_size], maps[i:i + batch_size], steps)
            deletion.append(d)
            insertion.append(ins)
        hits, energy = [pointing_game(maps, boxes).mean()], [energy_in_box(maps, boxes).mean()]
        for _ in range(RANDOM_DRAWS - 1 if redraw else 0):
            other = redraw()
            hits.append(pointing_game(other, boxes).mean())
            energy.append(energy_in_box(other, boxes).mean())
        row = dict(method=method, layer=layer, pointing_game=float(np.mean(hits)),
                   energy_in_box=float(np.mean(energy)), deletion_auc=float(np.concatenate(deletion).mean()),
                   insertion_auc=float(np.concatenate(insertion).mean()), n_images=len(x))
        log.info("%-9s %-20s pointing %.3f  energy %.3f  deletion %.3f  insertion %.3f  (%.0f s)",
                 method, layer, row["pointing_game"], row["energy_in_box"], row["deletion_auc"],
                 row["insertion_auc"], time.perf_counter() - started)
        return row

    rows = []
    for method in methods:
        started = time.perf_counter()
        maps = cam_maps(run.model, x, layers, method)  # chunked inside
        log.info("%s maps in %.0f s", method, time.perf_counter() - started)
        rows += [score(method, layer, maps[layer]) for layer in layers]
    rng = np.random.default_rng(0)

    def random_maps():
        return rng.random(x.shape[:3]).astype(np.float32)

    # One random map per image is a noisy baseline on few images (6 hits in 20 where 1.3 were
    # expected, seen), so its pointing and energy average RANDOM_DRAWS maps per image.
    rows.append(score("random", "-", random_maps(), redraw=random_maps))
    table = pd.DataFrame(rows, columns=EVAL_COLUMNS)
    with atomic_path(Path(run.path) / "cam_eval.csv") as tmp:
        table.to_csv(tmp, index=False)
    # Context for the table (not in the CSV): what a perfect map on each layer's grid scores.
    table.attrs["oracle"] = {}
    for layer in layers:
        grid = tuple(spatial_layer(run.model, layer).output.shape[1:3])
        table.attrs["oracle"][layer] = (grid, *oracle_scores(boxes, x.shape[1], grid))
        log.info("%s is %dx%d: the box itself on that grid scores pointing %.3f, energy %.3f",
                 layer, *grid, *table.attrs["oracle"][layer][1:])
    return table


# --------------------------------------------------------------------------------------------
# the CLI verb
# --------------------------------------------------------------------------------------------
def _expand(paths) -> list[Path]:
    from fracture.data import expand_image_paths

    return expand_image_paths(paths)


def default_images(run, n=4, split="test") -> list[str]:
    """A few images of one split of the run's data, both classes (half positive, first in index order)."""
    from fracture.data import load_index

    frame = load_index(run.config)
    chosen = frame[frame["split"] == split]
    if chosen.empty:
        raise FractureError(f"no {split} images in {run.config.data_dir}; pass --images")
    positives = chosen[chosen["label"] == 1]["path"].tolist()
    negatives = chosen[chosen["label"] == 0]["path"].tolist()
    k = min(len(positives), (n + 1) // 2)
    return positives[:k] + negatives[:n - k]


def _split(text) -> list[str]:
    return [t.strip() for t in str(text).split(",") if t.strip()]


def cli_cam(args) -> None:
    """`python -m fracture cam`: render panels, or with --evaluate score the maps (module doc)."""
    import pandas as pd

    from fracture.model import load_run

    methods = check_methods(_split(args.methods))
    layers = _split(args.layers)
    run = load_run(args.run)
    for name in layers:
        spatial_layer(run.model, name)
    if args.evaluate:
        table = evaluate_localization(run, methods, layers, limit=args.limit, split=args.split)
        print(f"CAM localization and faithfulness, run {run.name}, "
              f"{table['n_images'].iloc[0]} positive {args.split} images")
        print("(pointing game and energy in box: higher is better; deletion AUC: lower; insertion AUC: higher)")
        with pd.option_context("display.width", 200):
            print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        print("oracle: the true box averaged onto each layer's grid and upsampled "
              "(a perfect map at that resolution)")
        for layer, (grid, pointing, energy) in table.attrs.get("oracle", {}).items():
            print(f"  {layer:<20} {grid[0]}x{grid[1]}  pointing_game {pointing:.3f}  energy_in_box {energy:.3f}")
        print(f"written: {Path(run.path) / 'cam_eval.csv'}")
        if not args.images:
            return
    paths = _expand(args.images) if args.images else default_images(run, args.limit or 4, args.split)
    if args.limit:
        paths = paths[:args.limit]
    written = render(run, paths, layers, methods, out_dir=args.out, target=args.target)
    folders = sorted({str(p.parent) for p in written})
    print(f"{len(written)} files for {len(folders)} images (target: {args.target}):")
    for folder in folders:
        print(f"  {folder}/panel.png")
