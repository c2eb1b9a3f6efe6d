"""Pictures of the maps: overlays on the original image, channel grids, and one panel per image,
written as PNG files (and handed to MLflow when the run is tracked)."""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import numpy as np

from fracture.cam.backend import engine_for, predict_logits
from fracture.cam.checks import as_batch, check_methods, spatial_layer
from fracture.cam.maps import cam_maps, normalize_maps
from fracture.cam.metrics import boxes_by_path
from fracture.errors import DataError, FractureError
from fracture.scores import label, probability

log = logging.getLogger(__name__)


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

    x = as_batch(model, np.asarray(image)[None] if np.ndim(image) in (2, 3) else image)[:1]
    act = engine_for(model).layer(layer).activations(x)[0]
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



def _known_boxes(cfg) -> dict:
    try:
        return boxes_by_path(cfg)
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
    probabilities = probability(predict_logits(model, x))
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
        written.append(_panel(folder / "panel.png", gray, tiles, probabilities[i], run.threshold,
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
    verdict = label(probability, threshold)
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
