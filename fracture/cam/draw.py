"""Pictures of the maps: overlays, labelled channel grids and one panel per image, as PNG files.

Pictures of the maps: overlays on the original image, labelled channel grids, and one panel per
image (rows = layers, columns = methods, a shared colorbar, the true label, the prediction and the
fracture box), written as PNG files (and handed to MLflow when the run is tracked).

Scaling (`scale`): "map" stretches every map to its own [min, max], which shows the *shape* of the
evidence but paints a chance-level model's faint map as red as a confident one's; "shared" divides
each method x layer's maps by their largest value over all images rendered together, so weak
evidence stays dim next to strong. (Not across layers or methods: their raw values are in different
units, e.g. activation x gradient of layers with different scales.)"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import numpy as np

from fracture.cam.backend import engine_for, predict_logits
from fracture.cam.checks import PIXELS, as_batch, check_methods, method_layers, spatial_layer
from fracture.cam.maps import cam_maps, normalize_maps
from fracture.cam.metrics import box_list, boxes_by_path
from fracture.data import load_index, resize
from fracture.errors import DataError, FractureError
from fracture.fileio import atomic_path
from fracture.imageio import read_gray
from fracture.plots import DPI, FONT_SIZE  # one resolution and type size for every figure the package saves
from fracture.plots import new_figure, save_figure
from fracture.scores import ABNORMAL, NORMAL, UNCERTAIN_BAND, label, near_threshold, probability

log = logging.getLogger(__name__)

COLORMAP = "jet"  # overlay colormap, any matplotlib name (`cam --colormap`; turbo and inferno print better)
ALPHA = 0.4  # weight of the map over the X-ray in overlays (`cam --alpha`)
SCALES = ("map", "shared")  # map: each map to its own [0, 1]; shared: one scale per method x layer over the images
PANEL_METHODS = 5  # more methods than this: one panel file per layer (and one for the pixel maps)
PANEL_COLUMNS = 5  # tiles per row on those per-layer pages


def _colormap(name):
    import matplotlib

    try:
        return matplotlib.colormaps[name]
    except KeyError:
        raise FractureError(f"unknown colormap '{name}'; use a matplotlib name such as jet, turbo, inferno") from None


def overlay(gray, heatmap, colormap=COLORMAP, alpha=ALPHA) -> np.ndarray:
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


def _feature_tiles(model, image, layer, max_channels):
    """(channel indices, (k, h, w) tiles each scaled to [0, 1], channel count) of one image's activation:
    the `max_channels` most active channels (by mean activation), in channel order."""
    x = as_batch(model, np.asarray(image)[None] if np.ndim(image) in (2, 3) else image)[:1]
    act = engine_for(model).layer(layer).activations(x)[0]
    keep = np.sort(np.argsort(-act.mean(axis=(0, 1)), kind="stable")[:max_channels])
    return keep, normalize_maps(np.moveaxis(act[:, :, keep], -1, 0)), act.shape[-1]


def feature_grid(model, image, layer, max_channels=64, tile=48, colormap="viridis") -> np.ndarray:
    """RGB uint8 grid of a layer's channels for one image (H, W, 1): the `max_channels` most active
    channels in channel order, each scaled to [0, 1] on its own and enlarged to at least `tile` px.
    An unlabelled array; `feature_figure` is the same grid with channel indices and a colorbar."""
    import cv2

    keep, tiles, channels = _feature_tiles(model, image, layer, max_channels)
    h, w = tiles.shape[1:]
    scale = max(1, math.ceil(tile / max(h, w)))
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


def feature_figure(model, image, layer, max_channels=64, colormap="viridis", title=""):
    """The channel grid of `feature_grid` as a Figure: each tile titled with its channel index in
    the layer, nearest-neighbour pixels (the layer's own grid), one colorbar (per-channel scaling)."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    keep, tiles, channels = _feature_tiles(model, image, layer, max_channels)
    cmap = _colormap(colormap)
    cols = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    fig = new_figure(1.15 * cols + 0.8, 1.25 * rows + 0.6)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax, index, tile in zip(axes, keep, tiles):
        ax.imshow(tile, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"ch {index}", fontsize=FONT_SIZE - 2, pad=2)
    for ax in axes:
        ax.set_axis_off()
    bar = fig.colorbar(ScalarMappable(Normalize(0, 1), cmap), ax=axes.tolist(), shrink=0.6, pad=0.02)
    bar.set_label("activation, each channel to its own [min, max]", fontsize=FONT_SIZE - 1)
    bar.ax.tick_params(labelsize=FONT_SIZE - 2)
    h, w = tiles.shape[1:]
    fig.suptitle(f"{title + ': ' if title else ''}layer {layer}, {len(keep)} most active of {channels} channels "
                 f"({h}x{w} each, channel order)", fontsize=FONT_SIZE)
    return fig


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


def true_labels(cfg) -> dict:
    """{resolved image path: 0/1} from the run's data index; empty when the data is not there."""
    try:
        frame = load_index(cfg)
    except (FractureError, OSError) as exc:
        log.debug("no true labels for the panels: %s", exc)
        return {}
    return {str(Path(p).resolve()): int(v) for p, v in zip(frame["path"], frame["label"])}


def _true_label(path, known):
    """The index's label, else the MURA folder name's (`study1_positive`), else None (unknown)."""
    found = known.get(str(Path(path).resolve()))
    if found is not None:
        return found
    match = re.fullmatch(r"study\d+_(positive|negative)", Path(path).parent.name)
    return None if match is None else int(match.group(1) == "positive")


def scale_maps(raw: dict, scale: str = "map") -> dict:
    """{method: {layer: (B, H, W) raw non-negative maps}} -> the same with values in [0, 1].

    "map": each map to its own [min, max] (`normalize_maps`); "shared": each method x layer divided
    by its largest value over the B images, so a map with a tenth of another's values stays at a
    tenth (an all-zero set stays zero)."""
    if scale not in SCALES:
        raise FractureError(f"unknown scale '{scale}'; use one of {', '.join(SCALES)}")
    out = {}
    for method, by_layer in raw.items():
        out[method] = {}
        for layer, maps in by_layer.items():
            maps = np.asarray(maps, np.float32)
            if scale == "map":
                out[method][layer] = normalize_maps(maps)
            else:
                top = float(maps.max()) if maps.size else 0.0
                out[method][layer] = np.clip(maps / top, 0, 1) if top > 0 else np.zeros_like(maps)
    return out


def check_look(colormap, alpha, scale) -> None:
    """FractureError for an unknown colormap or scale, or an alpha outside [0, 1]."""
    _colormap(colormap)
    if not 0.0 <= float(alpha) <= 1.0:
        raise FractureError(f"alpha must be in [0, 1] (the map's weight over the X-ray), got {alpha}")
    if scale not in SCALES:
        raise FractureError(f"unknown scale '{scale}'; use one of {', '.join(SCALES)}")


def render(run, paths, layers, methods, out_dir="layer_outputs", target="fracture", colormap=COLORMAP,
           alpha=ALPHA, scale="map", dpi=DPI, **options) -> list[Path]:
    """Overlays, feature grids and one panel per image in out_dir/<run.name>/<image-stem>/.

    Files: `<method>__<layer>.png` (overlay on the original image at its own resolution; layer
    "pixels" for an input-space method), `features__<layer>.png` (channel grid with channel
    indices) and `panel.png` (`cam_panel`: rows = layers, plus a row "pixels" for input-space
    methods). With more than PANEL_METHODS methods (`--methods all`) one grid would be too small
    to read, so each layer gets `panel__<layer>.png` (its methods, PANEL_COLUMNS a row) and the
    input-space methods `panel__pixels.png`. `scale`: "map" or "shared" (module doc); colormap
    and alpha set the overlays' look. `options`: eigen_smooth, aug_smooth, ig_baseline for
    `cam_maps`. Returns the written paths.
    """
    layers = [layers] if isinstance(layers, str) else list(layers)
    methods = check_methods(methods)
    check_look(colormap, alpha, scale)
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
    raw = {}
    for method, layer in method_layers(methods, layers):  # an input-space method once, as "pixels"
        found = cam_maps(model, x, layers[0] if layer == PIXELS else layer, method, target, normalize=False, **options)
        raw.setdefault(method, {})[layer] = next(iter(found.values()))
    maps = scale_maps(raw, scale)
    boxes, labels = _known_boxes(run.config), true_labels(run.config)
    written = []
    for i, (path, gray) in enumerate(originals):
        stem = image_stem(path)
        stems[stem] = stems.get(stem, 0) + 1
        folder = Path(out_dir) / run.name / (stem if stems[stem] == 1 else f"{stem}-{stems[stem]}")
        folder.mkdir(parents=True, exist_ok=True)
        for method, layer in method_layers(methods, layers):
            picture = overlay(gray, maps[method][layer][i], colormap, alpha)
            written.append(_write_png(folder / f"{method}__{layer}.png", picture))
        for layer in layers:
            features = feature_figure(model, x[i], layer, title=stem)
            written.append(save_figure(features, folder / f"features__{layer}.png", dpi))
        common = dict(true_label=_true_label(path, labels), box=boxes.get(str(path.resolve())), target=target,
                      colormap=colormap, alpha=alpha, scale=scale, title=stem, n_images=len(originals))
        for name, page in _pages(methods, layers):
            panel = cam_panel(gray, {m: {l: maps[m][l][i] for l in page[m]} for m in page}, probabilities[i],
                              run.threshold, peaks={m: {l: float(raw[m][l][i].max()) for l in page[m]} for m in page},
                              columns=None if name == "panel" else PANEL_COLUMNS, **common)
            written.append(save_figure(panel, folder / f"{name}.png", dpi))
        log.info("%s: p(fracture)=%.3f -> %s", path, probabilities[i], folder)
    # One folder per image: handed over as folders, they land in MLflow as cam/<image-stem>/...
    # (the file names repeat from image to image).
    _log_to_mlflow(run, sorted({p.parent for p in written}))
    return written


def _pages(methods, layers) -> list[tuple[str, dict]]:
    """[(file stem, {method: [rows]})]: one "panel" while the methods fit (PANEL_METHODS), else
    one page per layer and one for the input-space methods."""
    pairs = method_layers(methods, layers)
    if len(methods) <= PANEL_METHODS:
        page = {}
        for method, layer in pairs:
            page.setdefault(method, []).append(layer)
        return [("panel", page)]
    pages = []
    for layer in [*layers, PIXELS]:
        page = {m: [l] for m, l in pairs if l == layer}
        if page:
            pages.append((f"panel__{layer}", page))
    return pages


def _write_png(path: Path, rgb) -> Path:
    import cv2

    image = rgb if rgb.ndim == 2 else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), image):
            raise FractureError(f"cannot write {path}")
    return path


def _verdict_line(probability, threshold, true_label):
    """('true: abnormal | predicted: normal, p(fracture) = 0.43 at threshold 0.5', colour): green
    when right, red when wrong, black when the truth is unknown."""
    predicted = label(probability, threshold)
    truth = {None: "unknown", 1: ABNORMAL, 0: NORMAL}[true_label]
    colour = "black" if true_label is None else ("darkgreen" if truth == predicted else "firebrick")
    line = f"true: {truth}   |   predicted: {predicted}, p(fracture) = {probability:.3f} (threshold {threshold:.3g})"
    return line, colour


PEAK_NOTE = ("peak: the map's largest value before scaling, in its method's own units (e.g. activation x "
             "gradient of the logit); compare peaks within one method and layer only. "
             "'map is 0': no positive evidence for the target.")


def cam_panel(gray, maps, probability, threshold, *, true_label=None, box=None, target="fracture",
              colormap=COLORMAP, alpha=ALPHA, scale="map", peaks=None, title="", n_images=1, columns=None):
    """One image's maps as a Figure: the original (with the true box, dashed, when known) on the
    left, then a grid with one row per layer and one column per method, one shared colorbar.

    gray: (H, W) uint8; maps: {method: {layer: (h, w) values in [0, 1]}} (any size, stretched over
    the image); a method may lack a layer (an input-space method has only "pixels"): that cell
    stays empty. peaks: the same keys with each raw map's largest value (printed in the tile and
    explained under the grid); true_label: 1, 0 or None. columns: lay the tiles out in rows of
    this many instead (one page of many methods), each titled "method" and labelled with its
    layer. The title names the truth, the prediction and its probability; a probability within
    `scores.UNCERTAIN_BAND` (the web app's band too) of the threshold gets a visible note.
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle

    gray = np.asarray(gray)
    gray = gray[..., 0] if gray.ndim == 3 else gray
    methods = list(maps)
    layers = list(dict.fromkeys(layer for m in methods for layer in maps[m]))
    if columns is None:
        cells = [(r, c, method, layer) for r, layer in enumerate(layers) for c, method in enumerate(methods)
                 if layer in maps[method]]
        n_rows, n_cols = len(layers), len(methods)
    else:
        tiles = [(method, layer) for method in methods for layer in maps[method]]
        n_cols = min(columns, len(tiles))
        n_rows = -(-len(tiles) // n_cols)
        cells = [(k // n_cols, k % n_cols, method, layer) for k, (method, layer) in enumerate(tiles)]
    cmap = _colormap(colormap)
    h, w = gray.shape
    tile = 2.3  # inches per map: ~7 in wide for the original and 2 methods
    aspect = h / w
    note = peaks is not None
    fig = new_figure(tile * (1 + n_cols) + 0.9, tile * aspect * n_rows + 1.3 + 0.35 * note)
    grid = fig.add_gridspec(n_rows, n_cols + 1)
    extent = (-0.5, w - 0.5, h - 0.5, -0.5)  # maps of any size stretched over the image's pixels

    def add_box(ax, colour):
        for x0, y0, x1, y1 in (box_list(box) if box is not None else []):
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor=colour,
                                   linewidth=1.2, linestyle="--"))

    ax = fig.add_subplot(grid[:, 0])
    ax.imshow(gray, cmap="gray", vmin=0, vmax=255)
    add_box(ax, "lime")
    ax.set_title("input" + ("\n(dashed: true fracture box)" if box is not None else ""), fontsize=FONT_SIZE - 1)
    ax.set_axis_off()
    map_axes = []
    for r, c, method, layer in cells:
        ax = fig.add_subplot(grid[r, c + 1])
        ax.imshow(gray, cmap="gray", vmin=0, vmax=255)
        ax.imshow(np.asarray(maps[method][layer], np.float32), cmap=cmap, vmin=0, vmax=1, alpha=alpha,
                  extent=extent, interpolation="bilinear")
        add_box(ax, "white")
        ax.set_xticks([])
        ax.set_yticks([])
        first_of_method = r == min(rr for rr, _, mm, _ in cells if mm == method)
        if columns is not None or first_of_method:  # methods head their columns
            ax.set_title(method, fontsize=FONT_SIZE)
        if c == min(cc for rr, cc, _, _ in cells if rr == r):  # layers name the rows
            ax.set_ylabel(layer, fontsize=FONT_SIZE - 1)
        if peaks is not None:  # the raw map's largest value: a 0 means no positive evidence at all
            peak = peaks[method][layer]
            ax.text(0.02, 0.02, f"peak {peak:.2g}" if peak > 0 else "map is 0: no positive evidence",
                    transform=ax.transAxes, fontsize=FONT_SIZE - 3, color="black",
                    bbox=dict(facecolor="white", alpha=0.7, edgecolor="none", pad=1))
        map_axes.append(ax)
    bar = fig.colorbar(ScalarMappable(Normalize(0, 1), cmap), ax=map_axes, shrink=0.7 if n_rows > 1 else 0.9,
                       pad=0.02)
    bar.set_label("each map to its own [min, max]" if scale == "map" else
                  f"map / its method x layer's max over {n_images} image{'s' * (n_images != 1)}",
                  fontsize=FONT_SIZE - 1)
    bar.ax.tick_params(labelsize=FONT_SIZE - 2)
    if note:
        import textwrap

        fig.supxlabel("\n".join(textwrap.wrap(PEAK_NOTE, 30 * (1 + n_cols))), fontsize=FONT_SIZE - 3)
    line, colour = _verdict_line(probability, threshold, true_label)
    heading = f"{title}   (maps explain: {target})\n" if title else f"maps explain: {target}\n"
    if near_threshold(probability, threshold):
        line += f"\nNOTE: p is within {UNCERTAIN_BAND:g} of the threshold, an uncertain call"
        colour = "darkorange" if true_label is None or colour == "darkgreen" else colour
    fig.suptitle(heading + line, fontsize=FONT_SIZE, color=colour)
    return fig


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
    frame = load_index(run.config)
    chosen = frame[frame["split"] == split]
    if chosen.empty:
        raise FractureError(f"no {split} images in {run.config.data_dir}; pass --images")
    positives = chosen[chosen["label"] == 1]["path"].tolist()
    negatives = chosen[chosen["label"] == 0]["path"].tolist()
    k = min(len(positives), (n + 1) // 2)
    return positives[:k] + negatives[:n - k]
