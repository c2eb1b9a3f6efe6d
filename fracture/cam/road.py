"""ROAD faithfulness (remove and debias): remove the pixels a map ranks highest, then re-score.

ROAD, RemOve And Debias (Rong et al. 2022), removes pixels ranked
by a map and fills them by *noisy linear imputation*, so the filled region carries no trace of
the removal's shape (a blur or black fill leaks the mask's outline, which the model can read).

Each removed pixel becomes the weighted mean of its 8 neighbours (1/6 for the 4 direct ones,
1/12 for the diagonals; at the border only the neighbours inside count), one sparse linear system
per image, plus Gaussian noise of ROAD_NOISE x 255 (the paper's 0.01 on [0, 1] images).

    road_morf_<k>   p(target) with the k % most relevant pixels removed (lower = more faithful)
    road_lerf_<k>   p(target) with the k % least relevant pixels removed (higher = more faithful)
    road_combined   mean over k of (lerf - morf) / 2 (pytorch-grad-cam's ROADCombined; higher is better)
    road_n_images   how many images these come from: the first ROAD_IMAGES of the evaluation's
                    (each removal is a sparse solve, ~0.3 s at 160 px on one core)

pytorch-grad-cam reports the change of the raw score; these are probabilities, like the deletion
and insertion curves beside them. Pixels are ranked with ties broken at random (a ReLU leaves
many zeros, and a threshold on equal values would remove far more or fewer than k %).
"""

from __future__ import annotations

import numpy as np

from fracture.cam.backend import predict_logits
from fracture.cam.checks import as_batch, target_sign
from fracture.scores import probability

ROAD_PERCENTS = (20, 40, 60, 80)  # share of the pixels removed
ROAD_NOISE = 0.01  # imputation noise std, as a share of the 0..255 pixel range
ROAD_IMAGES = 16  # images ROAD scores per row: one sparse solve per image and removal, ~0.3 s each
ROAD_COLUMNS = [*(f"road_morf_{k}" for k in ROAD_PERCENTS), *(f"road_lerf_{k}" for k in ROAD_PERCENTS),
                "road_combined", "road_n_images"]
NEIGHBOURS = [((-1, 0), 1 / 6), ((1, 0), 1 / 6), ((0, -1), 1 / 6), ((0, 1), 1 / 6),
              ((-1, -1), 1 / 12), ((-1, 1), 1 / 12), ((1, -1), 1 / 12), ((1, 1), 1 / 12)]


def linear_imputation(image, removed) -> np.ndarray:
    """(H, W) image with the pixels where `removed` is True replaced by the solution of
    sum_n w_n (v_neighbour - v) = 0 over the neighbours inside the image (noise-free)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve

    image = np.asarray(image, np.float64)
    h, w = image.shape
    ys, xs = np.nonzero(removed)
    if len(ys) == 0:
        return image.copy()
    unknown = -np.ones((h, w), np.int64)
    unknown[ys, xs] = np.arange(len(ys))
    rows, cols, values = [np.arange(len(ys))], [np.arange(len(ys))], [np.zeros(len(ys))]
    rhs = np.zeros(len(ys))
    for (dy, dx), weight in NEIGHBOURS:
        ny, nx = ys + dy, xs + dx
        inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        values[0][inside] += weight  # the diagonal: sum of the weights of the neighbours inside
        me, ny, nx = np.nonzero(inside)[0], ny[inside], nx[inside]
        other = unknown[ny, nx]
        free = other >= 0
        rows.append(me[free])
        cols.append(other[free])
        values.append(np.full(free.sum(), -weight))
        np.add.at(rhs, me[~free], weight * image[ny[~free], nx[~free]])
    system = coo_matrix((np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))),
                        shape=(len(ys), len(ys))).tocsc()
    out = image.copy()
    out[ys, xs] = spsolve(system, rhs)
    return out


def removal_mask(heatmap, percent, most_relevant, rng) -> np.ndarray:
    """Boolean (H, W): the `percent` % of pixels ranked highest (most_relevant) or lowest by the
    map, ties broken at random."""
    flat = np.asarray(heatmap, np.float64).ravel()
    order = np.lexsort((rng.random(flat.size), -flat if most_relevant else flat))
    mask = np.zeros(flat.size, bool)
    mask[order[:int(round(percent / 100 * flat.size))]] = True
    return mask.reshape(np.shape(heatmap))


def road_scores(model, images, maps, percents=ROAD_PERCENTS, target="fracture", noise=ROAD_NOISE, seed=0):
    """(morf, lerf), each (B, len(percents)): p(target) of the images with the most / least
    relevant pixels removed and imputed; all variants of a batch go through the model at once."""
    x = as_batch(model, images)
    rng = np.random.default_rng(seed)
    variants = []
    for image, heatmap in zip(x[..., 0], maps):
        for most_relevant in (True, False):
            for k in percents:
                removed = removal_mask(heatmap, k, most_relevant, rng)
                filled = linear_imputation(image, removed)
                filled[removed] += rng.standard_normal(int(removed.sum())) * noise * 255
                variants.append(filled)
    logits = predict_logits(model, np.asarray(variants, np.float32)[..., None])
    p = probability(target_sign(target) * logits.reshape(len(x), 2, len(percents)))
    return p[:, 0], p[:, 1]


def road_row(morf, lerf) -> dict:
    """Column means over the images for the cam_eval.csv row (ROAD_COLUMNS)."""
    row = {f"road_morf_{k}": float(morf[:, i].mean()) for i, k in enumerate(ROAD_PERCENTS)}
    row.update({f"road_lerf_{k}": float(lerf[:, i].mean()) for i, k in enumerate(ROAD_PERCENTS)})
    row["road_combined"] = float(((lerf - morf) / 2).mean())
    row["road_n_images"] = len(morf)
    return row
