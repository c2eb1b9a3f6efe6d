"""Proof that the maps mean something: localization against fracture boxes, and faithfulness.

Proof that the maps mean something: localization against the synthetic data's fracture boxes
(pointing game, energy in box, each beside a random map and the box itself seen through the
layer's grid) and faithfulness by deletion / insertion curves; see docs/cam.md."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np

from fracture.boxdata import index_boxes
from fracture.cam.backend import predict_logits
from fracture.cam.checks import PIXELS, as_batch, check_methods, spatial_layer, target_sign
from fracture.cam.maps import cam_maps, normalize_maps, upsample
from fracture.cam.methods import INPUT_METHODS
from fracture.cam.road import ROAD_COLUMNS, ROAD_IMAGES, road_row, road_scores
from fracture.data import find_mura_root, load_index, resize
from fracture.errors import DataError, FractureError
from fracture import runlock
from fracture.fileio import atomic_path
from fracture.imageio import read_gray
from fracture.scores import probability

log = logging.getLogger(__name__)

EVAL_COLUMNS = ["method", "layer", "pointing_game", "energy_in_box", "distractor_peak", "distractor_energy",
                "deletion_auc", "insertion_auc", "n_images", "n_with_distractor"]
# ROAD (road.py) after the columns above: kept in its own module and its own columns.
EVAL_COLUMNS = EVAL_COLUMNS + ROAD_COLUMNS
RANDOM_DRAWS = 50  # random maps per image behind the random baseline's pointing game and energy


def box_list(box) -> list[tuple[int, int, int, int]]:
    """One image's ground truth as a list of boxes: a single (x0, y0, x1, y1) or a list of them
    (a COCO / YOLO image may carry several fractures)."""
    if len(box) == 4 and all(np.ndim(v) == 0 for v in box):
        return [tuple(int(v) for v in box)]
    return [tuple(int(v) for v in b) for b in box]


def box_mask(box, shape) -> np.ndarray:
    """Boolean (H, W) mask of the union of an image's boxes."""
    mask = np.zeros(shape, bool)
    for x0, y0, x1, y1 in box_list(box):
        mask[y0:y1, x0:x1] = True
    return mask


def pointing_game(maps, boxes) -> np.ndarray:
    """1 where a map's maximum (first one on ties) lies in its box, or in any of its boxes
    (x0, y0, x1, y1; x1/y1 exclusive).

    A constant map (all zeros: what the ReLU leaves of a map with no positive evidence) points
    nowhere and counts as a miss; argmax alone would call it pixel (0, 0), a hit for any box there.
    """
    maps = np.asarray(maps)
    flat = maps.reshape(len(maps), -1)
    ys, xs = np.unravel_index(flat.argmax(axis=1), maps.shape[1:])
    inside = np.array([any(x0 <= x < x1 and y0 <= y < y1 for x0, y0, x1, y1 in box_list(b))
                       for b, x, y in zip(boxes, xs, ys)], bool)
    return (inside & (flat.max(axis=1) > flat.min(axis=1))).astype(np.float32)


def energy_in_box(maps, boxes) -> np.ndarray:
    """Share of each map's total inside its box (the union of its boxes); 0 for an all-zero map."""
    out = []
    for m, box in zip(np.asarray(maps, np.float64), boxes):
        total = m.sum()
        out.append(m[box_mask(box, m.shape)].sum() / total if total > 0 else 0.0)
    return np.asarray(out, np.float32)


def distractor_peak(maps, box_lists) -> np.ndarray:
    """1 where a map's maximum lies in any of its image's distractor boxes (side markers, rulers,
    text), 0 elsewhere and for an image without any; an all-constant map peaks nowhere."""
    return pointing_game(maps, box_lists)


def distractor_energy(maps, box_lists) -> np.ndarray:
    """Share of each map's total inside the union of its image's distractor boxes (NaN for an
    image without any, so the mean is over the images that have one)."""
    out = np.full(len(maps), np.nan, np.float32)
    for i, (m, boxes) in enumerate(zip(np.asarray(maps, np.float64), box_lists)):
        if len(boxes):
            total = m.sum()
            out[i] = m[box_mask(boxes, m.shape)].sum() / total if total > 0 else 0.0
    return out


def oracle_scores(boxes, size, grid) -> tuple[float, float]:
    """Pointing game and energy in box of the boxes themselves seen through a layer's `grid`
    (h, w): each box averaged into the grid's cells, upsampled and scaled like a CAM. What a
    perfect localiser at that resolution shows; the synthetic boxes are smaller than a cell of the
    deepest layers, so there even a perfect map scores well below 1."""
    import cv2

    h, w = grid
    low = []
    for box in boxes:
        mask = box_mask(box, (size, size)).astype(np.float32)
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

    x = as_batch(model, images)
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
    p = probability(target_sign(target) * logits)  # p(target): p(normal) = sigmoid(-logit)
    area = np.trapezoid(p, fractions, axis=-1)
    return area[:, 0].astype(np.float32), area[:, 1].astype(np.float32)


def _positives_with_boxes(run, limit=0, split="test"):
    """Positive images of one split of the run's box-annotated data (synthetic MURA, COCO, YOLO):
    (paths, images at model size, each image's boxes at model size, each image's distractor
    boxes at model size: side markers, rulers, text; empty lists where the dataset has none)."""
    cfg = run.config
    try:
        box_of = boxes_by_path(cfg)
    except DataError as exc:
        raise FractureError(f"--evaluate needs fracture boxes: synthetic data (python -m fracture synth) or a "
                            f"box-annotated dataset (data_format=coco or yolo); run {run.name} uses "
                            f"data_dir={cfg.data_dir}: {exc}") from None
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
    distractors_of = distractor_boxes_by_path(cfg)
    images, scaled, distractors = [], [], []
    for p in paths:
        gray = read_gray(p, cfg.max_pixels)
        images.append(resize(gray, size))
        key = str(Path(p).resolve())
        scaled.append([scale_box(b, gray.shape, size) for b in box_list(box_of[key])])
        distractors.append([scale_box(b, gray.shape, size) for b in distractors_of.get(key, [])])
    return paths, np.stack(images)[..., None].astype(np.float32), scaled, distractors


def evaluate_localization(run, methods, layers, limit=0, steps=16, batch_size=16, split="test",
                          road_images=ROAD_IMAGES):
    """Pointing game, energy in box and deletion/insertion AUCs per method and layer over the
    positive images of one split of a synthetic run (default test = MURA's `valid` folder, which
    played no part in training or picking the epoch), plus two random-map baselines: a random
    value per pixel (method=random_pixel, layer "-") and per cell of each layer's grid, upsampled
    like that layer's maps (method=random_grid); written to <run>/cam_eval.csv. The ROAD columns
    (road.py) come from the first `road_images` of those images (0 = all). An input-space
    method has one row, layer "pixels"."""
    import pandas as pd

    methods = check_methods(methods)
    layers = [layers] if isinstance(layers, str) else list(layers)
    for name in layers:
        spatial_layer(run.model, name)
    _, x, boxes, distractors = _positives_with_boxes(run, limit, split)
    has_distractors = any(len(d) for d in distractors)
    log.info("CAM evaluation of %s on %d positive %s images", run.name, len(x), split)

    def score(method, layer, maps, redraw=None):
        """One table row; `redraw()` gives more maps to average pointing and energy over."""
        started = time.perf_counter()
        deletion = insertion = [np.full(len(x), np.nan, np.float32)]  # steps=0: localization only (NaN)
        if steps:
            curves = [deletion_insertion(run.model, x[i:i + batch_size], maps[i:i + batch_size], steps)
                      for i in range(0, len(x), batch_size)]
            deletion, insertion = [d for d, _ in curves], [ins for _, ins in curves]
        drawn = [maps] + [redraw() for _ in range(RANDOM_DRAWS - 1 if redraw else 0)]
        hits = [pointing_game(m, boxes).mean() for m in drawn]
        energy = [energy_in_box(m, boxes).mean() for m in drawn]
        row = dict(method=method, layer=layer, pointing_game=float(np.mean(hits)),
                   energy_in_box=float(np.mean(energy)), distractor_peak=float("nan"),
                   distractor_energy=float("nan"), deletion_auc=float(np.concatenate(deletion).mean()),
                   insertion_auc=float(np.concatenate(insertion).mean()), n_images=len(x),
                   n_with_distractor=sum(bool(len(d)) for d in distractors))
        if steps:  # steps=0: localization only (make demo); ROAD is a faithfulness score too
            road = slice(0, road_images or len(x))
            row.update(road_row(*road_scores(run.model, x[road], maps[road])))
        if has_distractors:  # share of *all* positives whose map peaks on a marker/ruler/text
            row["distractor_peak"] = float(np.mean([distractor_peak(m, distractors).mean() for m in drawn]))
            row["distractor_energy"] = float(np.mean([np.nanmean(distractor_energy(m, distractors)) for m in drawn]))
        log.info("%-9s %-20s pointing %.3f  energy %.3f  distractor peak %.3f energy %.3f  deletion %.3f  "
                 "insertion %.3f  (%.0f s)", method, layer, row["pointing_game"], row["energy_in_box"],
                 row["distractor_peak"], row["distractor_energy"], row["deletion_auc"], row["insertion_auc"],
                 time.perf_counter() - started)
        return row

    rows = []
    for method in methods:
        started = time.perf_counter()
        maps = cam_maps(run.model, x, layers, method)  # chunked inside
        log.info("%s maps in %.0f s", method, time.perf_counter() - started)
        if method in INPUT_METHODS:  # the same maps under every layer's key
            rows.append(score(method, PIXELS, maps[layers[0]]))
        else:
            rows += [score(method, layer, maps[layer]) for layer in layers]
    rng = np.random.default_rng(0)

    def random_pixels():
        return rng.random(x.shape[:3]).astype(np.float32)

    def random_grid(grid):
        """Random maps on a layer's grid, upsampled and scaled like a CAM of that layer: smooth
        blobs, which delete whole regions at a time (a per-pixel order is the easiest to beat)."""
        return lambda: normalize_maps(upsample(rng.random((len(x), *grid)).astype(np.float32), x.shape[1:3]))

    # One random map per image is a noisy baseline on few images (6 hits in 20 where 1.3 were
    # expected, seen), so its pointing and energy average RANDOM_DRAWS maps per image.
    rows.append(score("random_pixel", "-", random_pixels(), redraw=random_pixels))
    for layer in layers:
        draw = random_grid(tuple(spatial_layer(run.model, layer).output.shape[1:3]))
        rows.append(score("random_grid", layer, draw(), redraw=draw))
    table = pd.DataFrame(rows, columns=EVAL_COLUMNS)
    with runlock.hold(run.path, "cam --evaluate"):  # one writer per run folder, as train and evaluate
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



def distractor_boxes_by_path(cfg) -> dict:
    """{resolved image path: [(x0, y0, x1, y1), ...]} from the dataset's distractor_boxes.csv
    (empty when the dataset has none, or its data is not a MURA tree)."""
    from fracture.synth import load_distractor_boxes  # here, not at the top: it loads cv2, which this module does not

    try:
        frame = load_distractor_boxes(find_mura_root(cfg.data_dir))
    except DataError as exc:
        if "distractor" in str(exc):  # a box file that exists but is broken is the user's to fix
            raise
        return {}
    out = {}
    for p, x0, y0, x1, y1 in frame[["path", "x0", "y0", "x1", "y1"]].itertuples(index=False):
        out.setdefault(str(Path(p).resolve()), []).append((int(x0), int(y0), int(x1), int(y1)))
    return out


def boxes_by_path(cfg) -> dict:
    """{resolved image path: box or list of boxes (x0, y0, x1, y1)}: the synthetic tree's
    fracture_boxes.csv (data_format=mura) or a COCO / YOLO dataset's fracture-class boxes;
    DataError when the data has none (real MURA, class folders)."""
    if cfg.data_format in ("coco", "yolo"):
        return {str(Path(p).resolve()): b for p, b in index_boxes(cfg)[1].items()}
    if cfg.data_format != "mura":
        raise DataError(f"data_format={cfg.data_format} has no boxes")
    from fracture.synth import load_boxes  # here, not at the top: it loads cv2, which this module does not

    boxes = load_boxes(find_mura_root(cfg.data_dir))
    return BoxIndex({str(Path(p).resolve()): (x0, y0, x1, y1)
                     for p, x0, y0, x1, y1 in boxes[["path", "x0", "y0", "x1", "y1"]].itertuples(index=False)})


class BoxIndex(dict):
    """{resolved path: box} that also finds an image of the dataset named another way: another copy
    of the tree, a symlinked or moved folder. Within a MURA tree the last five parts of a path
    (split/XR_TYPE/patient/study/image) name one image, so they are the fallback key."""

    TAIL = 5

    def __init__(self, boxes: dict):
        super().__init__(boxes)
        self.by_tail = {Path(p).parts[-self.TAIL:]: box for p, box in boxes.items()}

    def _tail(self, key):
        return Path(str(key)).parts[-self.TAIL:]

    def __contains__(self, key):
        return super().__contains__(key) or self._tail(key) in self.by_tail

    def __getitem__(self, key):
        return super().__getitem__(key) if super().__contains__(key) else self.by_tail[self._tail(key)]

    def get(self, key, default=None):
        return self[key] if key in self else default


