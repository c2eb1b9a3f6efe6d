"""CAM sanity checks (Adebayo et al. 2018): a map must change when the model's weights are randomized.

CAM sanity checks (Adebayo et al. 2018, "Sanity Checks for Saliency Maps"): a map that explains
the model must change when the model's weights are randomized. On a copy of the model the weights
are re-drawn from each layer's own initializers, cascading from the top (the dense head) down to
the first convolution; after each step every method's maps are compared with the trained model's.

Steps: the head (the layers with weights after the last spatial output), then the backbone by
stage, top first. DenseNet names its layers `convN_...` (dense block N) and `poolN_...` (the
transition after it), so a stage is everything named with N (and the final `bn` joins stage 5);
a model without such names (the tests' tiny nets) gets one step per layer with weights.
Preprocessing (`Normalization`, `Rescaling`) and augmentation layers are never touched.

Per image, original against randomized map:
    spearman      rank correlation of the [0, 1] maps as drawn (after the ReLU, upsampled); a
                  randomized map that the ReLU left blank shares no ranking: 0
    spearman_abs  the same on |map before the ReLU| (Adebayo's absolute-value variant): a map
                  whose sign flipped keeps its structure here, so this is the stricter of the two
    ssim          structural similarity of the [0, 1] maps (Wang et al. 2004: Gaussian window,
                  sigma 1.5, 11 px; as scikit-image's structural_similarity(gaussian_weights=True,
                  use_sample_covariance=False, data_range=1))
Images whose original map is blank (the model sees nothing there) are left out of the means.
A method passes when its mean spearman with every layer randomized is below PASS_BELOW.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from fracture.cam.backend import release_engine
from fracture.cam.checks import as_batch, check_methods, method_layers, spatial_layer, target_sign
from fracture.cam.draw import default_images, overlay
from fracture.cam.maps import layer_maps, normalize_maps, upsample
from fracture import runlock
from fracture.data import resize
from fracture.fileio import atomic_path
from fracture.imageio import read_gray

log = logging.getLogger(__name__)

SANITY_COLUMNS = ["method", "layer", "step", "randomized_from", "spearman", "spearman_abs", "ssim",
                  "n_images", "n_blank"]
PASS_BELOW = 0.5  # mean rank correlation with all weights randomized, below which a method passes
STAGE = re.compile(r"^(?:conv|pool)(\d+)_")  # DenseNet's dense block / transition number


# ----------------------------------------------------------------------------------------------
# the cascade
# ----------------------------------------------------------------------------------------------
def _randomizable(layer) -> bool:
    import keras

    fixed = (keras.layers.Normalization, keras.layers.Rescaling, keras.layers.InputLayer)
    return bool(layer.weights) and not isinstance(layer, fixed) and not layer.name.startswith("augment_")


def cascade(model) -> list[tuple[str, list]]:
    """[(step name, layers it randomizes)], top first; each step adds to the ones before."""
    layers = [layer for layer in model.layers if _randomizable(layer)]
    spatial = [i for i, layer in enumerate(model.layers) if len(tuple(layer.output.shape)) == 4]
    last_spatial = model.layers[spatial[-1]] if spatial else None
    head_start = model.layers.index(last_spatial) + 1 if last_spatial is not None else 0
    head = [layer for layer in layers if model.layers.index(layer) >= head_start]
    backbone = [layer for layer in layers if model.layers.index(layer) < head_start]
    steps = [("head", head)] if head else []
    stages = [STAGE.match(layer.name) for layer in backbone]
    if not any(stages):
        return steps + [(layer.name, [layer]) for layer in reversed(backbone)]
    # Top down; a name without a stage joins the stage above it, or at the very top (DenseNet's
    # final `bn`) the one below.
    current, grouped = None, {}
    for layer, match in zip(reversed(backbone), reversed(stages)):
        current = f"stage{match.group(1)}" if match else (current or _next_stage(backbone, layer, stages))
        grouped.setdefault(current, []).append(layer)
    return steps + list(grouped.items())


def _next_stage(backbone, layer, stages) -> str:
    below = [m for m in reversed(stages[:backbone.index(layer)]) if m]
    return f"stage{below[0].group(1)}" if below else layer.name


def randomize(layers, seed=0) -> None:
    """Re-draw every variable of `layers` in place from its layer's own initializer (kernel from
    kernel_initializer, BatchNorm's gamma from gamma_initializer, ...), seeded; a variable without
    one is shuffled instead (same values, random places)."""
    rng = np.random.default_rng(seed)
    for layer in layers:
        for variable in layer.weights:
            initializer = getattr(layer, f"{variable.name}_initializer", None)
            if initializer is None and variable.name == "kernel":
                initializer = getattr(layer, "depthwise_initializer", None)
            if initializer is not None:
                config = initializer.get_config()
                if "seed" in config:
                    config["seed"] = int(rng.integers(2**31 - 1))
                value = type(initializer).from_config(config)(tuple(variable.shape), dtype=variable.dtype)
            else:
                import keras

                value = rng.permutation(np.asarray(keras.ops.convert_to_numpy(variable)).ravel())
                value = value.reshape(tuple(variable.shape))
            variable.assign(value)


def copy_model(model):
    """A copy with its own variables (the CamEngine of `model` keeps compiled functions of the
    original weights; randomizing a copy leaves them and the original untouched)."""
    import keras

    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


# ----------------------------------------------------------------------------------------------
# comparing maps
# ----------------------------------------------------------------------------------------------
def ssim(a, b, data_range=1.0) -> float:
    """Mean structural similarity of two 2-D maps (Wang et al. 2004): Gaussian-weighted local
    means, variances and covariance (sigma 1.5, 11x11 window, mirrored borders), averaged away
    from the border, as scikit-image with gaussian_weights=True and use_sample_covariance=False."""
    import cv2

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def blur(m):
        return cv2.GaussianBlur(m, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a ** 2, blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(s[5:-5, 5:-5].mean()) if min(s.shape) > 10 else float(s.mean())


def _blank(m) -> bool:
    return not m.max() > m.min()


def compare(original, randomized) -> dict:
    """Per-image spearman / ssim of two stacks of [0, 1] maps (B, H, W); NaN where the original is
    blank (nothing to compare), spearman 0 where only the randomized map is."""
    from scipy.stats import spearmanr

    rho, similarity = [], []
    for o, r in zip(original, randomized):
        if _blank(o):
            rho.append(np.nan)
            similarity.append(np.nan)
            continue
        rho.append(0.0 if _blank(r) else float(spearmanr(o.ravel(), r.ravel()).statistic))
        similarity.append(ssim(o, r))
    return dict(spearman=np.asarray(rho), ssim=np.asarray(similarity))


def signed_maps(model, x, layer, method, target="fracture"):
    """(drawn, absolute): the [0, 1] maps as drawn, and |map before the ReLU| upsampled and scaled,
    from one pass."""
    raw = layer_maps(model, x, layer, method, target, relu=False)
    size = x.shape[1:3]
    return normalize_maps(upsample(np.maximum(raw, 0), size)), normalize_maps(upsample(np.abs(raw), size))


# ----------------------------------------------------------------------------------------------
# the check
# ----------------------------------------------------------------------------------------------
def cascade_scores(model, images, methods, layers, target="fracture", seed=0, map_fn=signed_maps):
    """(table, maps): the table has one row per (step, method, layer) with SANITY_COLUMNS; maps is
    {(step name, method, layer): drawn maps (B, H, W)} with step "original" first. `map_fn(model,
    x, layer, method, target) -> (drawn, absolute)` is replaceable so a test can show the check fail."""
    import pandas as pd

    methods = check_methods(methods)
    layers = [layers] if isinstance(layers, str) else list(layers)
    for name in layers:
        spatial_layer(model, name)
    target_sign(target)
    x = as_batch(model, images)
    copy = copy_model(model)
    try:
        pairs = method_layers(methods, layers)  # an input-space method once, as layer "pixels"
        original = {(m, l): map_fn(copy, x, l, m, target) for m, l in pairs}
        maps = {("original", m, l): original[m, l][0] for m, l in pairs}
        rows = []
        for k, (step, randomized) in enumerate(cascade(copy), start=1):
            randomize(randomized, seed + k)
            lowest = min(randomized, key=copy.layers.index).name
            for method, layer in pairs:
                drawn, absolute = map_fn(copy, x, layer, method, target)
                maps[step, method, layer] = drawn
                plain, strict = compare(original[method, layer][0], drawn), \
                    compare(original[method, layer][1], absolute)
                kept = ~np.isnan(plain["spearman"])
                rows.append(dict(method=method, layer=layer, step=step, randomized_from=lowest,
                                 spearman=_mean(plain["spearman"]), spearman_abs=_mean(strict["spearman"]),
                                 ssim=_mean(plain["ssim"]), n_images=int(kept.sum()),
                                 n_blank=int(sum(_blank(d) for d, k in zip(drawn, kept) if k))))
            log.info("randomized %s (from %s): %s", step, lowest, "  ".join(
                f"{r['method']}/{r['layer']} {r['spearman']:.2f}" for r in rows[-len(pairs):]))
    finally:
        release_engine(copy)
    return pd.DataFrame(rows, columns=SANITY_COLUMNS), maps


def _mean(values) -> float:
    values = np.asarray(values, np.float64)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def verdicts(table) -> dict:
    """{(method, layer): mean spearman with every layer randomized, and whether it is below PASS_BELOW}."""
    last = table.groupby(["method", "layer"], sort=False).tail(1)
    return {(r.method, r.layer): (r.spearman, bool(r.spearman < PASS_BELOW)) for r in last.itertuples()}


def sanity_figure(images, maps, methods, layers, max_columns=8):
    """Rows: original, then each cascade step; columns: image x method x layer (up to
    max_columns). Each cell is the map over its image, as `cam` draws it."""
    from matplotlib.figure import Figure

    steps = list(dict.fromkeys(step for step, _, _ in maps))
    combos = method_layers(methods, layers)
    per_combo = max(1, max_columns // len(combos))
    columns = [(i, m, l) for m, l in combos for i in range(min(per_combo, len(images)))][:max_columns]
    fig = Figure(figsize=(1.6 * len(columns) + 1.2, 1.6 * len(steps) + 0.6), layout="constrained")
    axes = fig.subplots(len(steps), len(columns), squeeze=False)
    for r, step in enumerate(steps):
        for c, (i, method, layer) in enumerate(columns):
            ax = axes[r, c]
            gray = np.asarray(images[i]).reshape(images.shape[1:3]).clip(0, 255).astype(np.uint8)
            ax.imshow(overlay(gray, maps[step, method, layer][i]))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"{method}\n{layer}, image {i + 1}", fontsize=8)
            if c == 0:
                ax.set_ylabel(step if step == "original" else f"+ {step}", fontsize=8)
    fig.suptitle("CAM sanity check: maps as the weights are randomized from the top down", fontsize=10)
    return fig


def sanity_check(run, methods, layers, limit=0, split="test", target="fracture", seed=0):
    """The cascade on a few images of the run's data (both classes; 8 unless `limit`): writes
    <run>/cam_sanity.csv and <run>/plots/cam_sanity.png and returns the table."""
    paths = default_images(run, limit or 8, split)
    size = run.model.input_shape[1]
    x = np.stack([resize(read_gray(p, run.config.max_pixels), size) for p in paths])[..., None].astype(np.float32)
    log.info("CAM sanity check of %s on %d %s images", run.name, len(x), split)
    table, maps = cascade_scores(run.model, x, methods, layers, target, seed)
    with runlock.hold(run.path, "cam --sanity"):  # one writer per run folder, as train and evaluate
        with atomic_path(Path(run.path) / "cam_sanity.csv") as tmp:
            table.to_csv(tmp, index=False)
    fig = sanity_figure(x, maps, check_methods(methods), [layers] if isinstance(layers, str) else list(layers))
    with atomic_path(Path(run.path) / "plots" / "cam_sanity.png") as tmp:
        fig.savefig(tmp, dpi=110)
    return table
