"""95 % confidence intervals by cluster bootstrap, and the validation-chosen decision threshold.

A split's images are not independent draws: the views of one study, and the studies of one patient,
share anatomy, device and label. So a resample draws whole *patients* with replacement (when the
data knows them; MURA does, class folders do not and count each image as its own patient) and
takes every image or study of a drawn patient as many times as the patient was drawn. Interval
method: percentile, 2.5th and 97.5th of the resampled statistic (Efron & Tibshirani 1993, ch. 13).

All five statistics of one resample come from one weighted confusion matrix and one weighted
rank-sum, for a block of resamples at a time with numpy: 2000 resamples of a few hundred studies
take well under a second.
"""

from __future__ import annotations

import numpy as np

CONFIDENCE = 0.95
MIN_PER_CLASS = 10  # fewer patients than this on either side: no interval (it would mean little)
BLOCK = 256  # resamples per vectorised block: bounds memory at BLOCK x n floats
STATISTICS = ("auc", "kappa", "sensitivity", "specificity", "accuracy")


# --------------------------------------------------------------------------------------------
# resampling
# --------------------------------------------------------------------------------------------
def cluster_weights(clusters, resamples: int, rng) -> np.ndarray:
    """(resamples, n) multiplicities: row r says how often each item appears in resample r. Items of
    one cluster share their cluster's draw count, so they move together."""
    _, index = np.unique(np.asarray(clusters), return_inverse=True)
    k = int(index.max()) + 1 if len(index) else 0
    drawn = rng.integers(0, k, size=(resamples, k))
    counts = np.zeros((resamples, k))
    np.add.at(counts, (np.arange(resamples)[:, None], drawn), 1.0)
    return counts[:, index]


def weighted_statistics(labels, probabilities, threshold: float, weights) -> dict[str, np.ndarray]:
    """The five statistics for each row of `weights` (item multiplicities); NaN where undefined
    (a resample without both classes has no AUC, kappa, sensitivity or specificity)."""
    labels = np.asarray(labels).astype(bool)
    probabilities = np.asarray(probabilities, dtype=float)
    weights = np.atleast_2d(np.asarray(weights, dtype=float))
    predicted = probabilities > threshold  # the rule of fracture.scores.is_abnormal
    tp = weights @ (labels & predicted)
    fn = weights @ (labels & ~predicted)
    fp = weights @ (~labels & predicted)
    tn = weights @ (~labels & ~predicted)
    positives, negatives = tp + fn, tn + fp
    n = positives + negatives
    both = (positives > 0) & (negatives > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        observed = (tp + tn) / n
        chance = ((tp + fn) * (tp + fp) + (tn + fp) * (tn + fn)) / n**2
        kappa = (observed - chance) / (1 - chance)
        return {
            "auc": np.where(both, _weighted_auc(labels, probabilities, weights) / (positives * negatives), np.nan),
            "kappa": np.where(both, kappa, np.nan),
            "sensitivity": np.where(both, tp / positives, np.nan),
            "specificity": np.where(both, tn / negatives, np.nan),
            "accuracy": observed,
        }


def _weighted_auc(labels, probabilities, weights) -> np.ndarray:
    """Mann-Whitney numerator per row: weighted pairs (positive above negative) + half the ties."""
    order = np.argsort(probabilities, kind="stable")
    sorted_scores = probabilities[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])  # one group per distinct score
    w = weights[:, order]
    pos = np.add.reduceat(w * labels[order], starts, axis=1)
    neg = np.add.reduceat(w * ~labels[order], starts, axis=1)
    negatives_below = np.cumsum(neg, axis=1) - neg
    return (pos * (negatives_below + 0.5 * neg)).sum(axis=1)


# --------------------------------------------------------------------------------------------
# intervals
# --------------------------------------------------------------------------------------------
def bootstrap_intervals(labels, probabilities, threshold: float, clusters=None, resamples: int = 2000,
                        seed: int = 0, unit: str = "patient") -> dict:
    """`{<stat>_ci: [low, high] | None}` for the five statistics, plus how they were made.

    clusters: the resampling unit of each item (patient ids); None = each item its own unit.
    A split with fewer than MIN_PER_CLASS units holding a positive, or a negative, gets no interval
    and a `ci_note` that says why. Resamples that miss a class give no AUC, kappa, sensitivity or
    specificity; they are counted in `ci_resamples_one_class` and left out of those intervals.
    """
    labels = np.asarray(labels).astype(int)
    clusters = np.arange(len(labels)) if clusters is None else np.asarray(clusters)
    out = {f"{name}_ci": None for name in STATISTICS}
    if resamples <= 0:
        return out
    units_with = {c: len(np.unique(clusters[labels == c])) for c in (0, 1)}
    if min(units_with.values()) < MIN_PER_CLASS:
        out["ci_note"] = (f"too small for a confidence interval: {units_with[1]} abnormal and {units_with[0]} "
                          f"normal {unit}s (at least {MIN_PER_CLASS} of each needed)")
        return out
    rng = np.random.default_rng(seed)
    values = {name: [] for name in STATISTICS}
    for start in range(0, resamples, BLOCK):
        weights = cluster_weights(clusters, min(BLOCK, resamples - start), rng)
        for name, v in weighted_statistics(labels, probabilities, threshold, weights).items():
            values[name].append(v)
    tail = 100 * (1 - CONFIDENCE) / 2
    for name in STATISTICS:
        v = np.concatenate(values[name])
        v = v[np.isfinite(v)]
        out[f"{name}_ci"] = [float(x) for x in np.percentile(v, [tail, 100 - tail])] if len(v) else None
    one_class = int(np.isnan(np.concatenate(values["auc"])).sum())
    out.update(ci_method=f"percentile, {int(CONFIDENCE * 100)}%, {resamples} resamples of {unit}s, seed {seed}",
               ci_resamples_one_class=one_class)
    return out


# --------------------------------------------------------------------------------------------
# the decision threshold, chosen on validation
# --------------------------------------------------------------------------------------------
def choose_threshold(labels, probabilities, target_sensitivity: float = 0.0) -> tuple[float, str]:
    """(threshold, rule) for the strict rule `probability > threshold`.

    target_sensitivity 0: Youden's J, the ROC point that maximises sensitivity + specificity - 1
    (the highest such threshold on ties). Otherwise the highest threshold whose sensitivity reaches
    the target. The returned value sits halfway between the chosen score and the next lower one, so
    `>` reproduces the ROC point exactly and a slightly different score does not flip it.
    """
    from sklearn.metrics import roc_curve

    labels = np.asarray(labels).astype(int)
    probabilities = np.asarray(probabilities, dtype=float)
    if len(np.unique(labels)) < 2:
        raise ValueError("choosing a threshold needs both classes in the validation split")
    fpr, tpr, cuts = roc_curve(labels, probabilities, drop_intermediate=False)
    fpr, tpr, cuts = fpr[1:], tpr[1:], cuts[1:]  # cuts[0] is +inf: nothing called abnormal
    if target_sensitivity > 0:
        i = int(np.flatnonzero(tpr >= target_sensitivity - 1e-12)[0])
        rule = f"highest threshold with validation sensitivity >= {target_sensitivity:g}"
    else:
        i = int(np.argmax(tpr - fpr))
        rule = "Youden's J (max sensitivity + specificity - 1) on validation"
    below = probabilities[probabilities < cuts[i]]
    threshold = (cuts[i] + below.max()) / 2 if len(below) else 0.0
    return float(np.clip(threshold, 0.0, 1.0)), rule
