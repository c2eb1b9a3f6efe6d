"""The run's figures: training curves, ROC, precision-recall, reliability, confusion matrices.

The run's figures: training curves, ROC, precision-recall, reliability diagram and confusion
matrices at image and study level, each naming its split and n.

Every function returns a matplotlib `Figure` (no pyplot state, so a notebook's inline plots and
the web app's threads are unaffected; a notebook shows one with `display(fig)`), and `save_figure`
writes one atomically. `save_plots` writes them all into a run's plots/ folder. The curves come
from scikit-learn's displays (`RocCurveDisplay`, `PrecisionRecallDisplay`, `CalibrationDisplay`,
`ConfusionMatrixDisplay`); the operating point is the run's decision rule (`scores.is_abnormal`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fracture.fileio import atomic_path
from fracture.scores import ABNORMAL, NORMAL, is_abnormal, study_level

DPI = 150  # saved resolution: 150 reads well on screen and in a draft; pass dpi=300 for print
FONT_SIZE = 10  # points; with the figure sizes below, legible at one column of a paper (~3.5 in)
# one colour per level in every figure (passed as curve_kwargs: scikit-learn >= 1.7)
LEVEL_STYLE = {"image": dict(color="tab:blue"), "study": dict(color="tab:orange")}
CURVES = "curves.png"  # save_plots: in plots/ (one per run): loss, AUC, accuracy, learning rate, best epoch
FILES = {  # save_plots: in plots/<split>/ (val by train, test by evaluate): file name -> what it shows
    "roc.png": "ROC at image and study level with the operating point",
    "precision_recall.png": "precision-recall at image and study level with the operating point",
    "calibration.png": "reliability diagram and the histogram of predicted probabilities",
    "confusion_matrix.png": "confusion matrices at image and study level",
}


def new_figure(width: float, height: float, **kwargs):
    """A Figure of its own (not pyplot's), constrained layout, the module's font size."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained", **kwargs)


def save_figure(fig, path, dpi: int = DPI) -> Path:
    """Write `fig` to `path` atomically (format from the suffix); the size is figsize * dpi exactly."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi)  # a Figure without pyplot needs no close(): nothing else holds it
    return path


def _font(ax, size=FONT_SIZE):
    ax.title.set_fontsize(size + 1)
    ax.xaxis.label.set_fontsize(size)
    ax.yaxis.label.set_fontsize(size)
    ax.tick_params(labelsize=size - 1)


def levels(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """{'image': frame, 'study': one row per study (mean probability, MURA protocol)}."""
    return {"image": frame, "study": study_level(frame)}


def operating_point(labels, probabilities, threshold: float) -> dict:
    """Sensitivity, specificity, precision and the counts at the run's threshold."""
    labels = np.asarray(labels).astype(int)
    predicted = is_abnormal(probabilities, threshold)
    tp = int(np.sum(predicted & (labels == 1)))
    fp = int(np.sum(predicted & (labels == 0)))
    positives, negatives = int(np.sum(labels == 1)), int(np.sum(labels == 0))
    return {"sensitivity": tp / positives if positives else float("nan"),
            "specificity": 1 - fp / negatives if negatives else float("nan"),
            "precision": tp / (tp + fp) if tp + fp else float("nan"),
            "positives": positives, "negatives": negatives}


def _counts(part) -> str:
    positives = int(part["label"].sum())
    return f"n={len(part)}, {positives} {ABNORMAL}"


def _legend(ax, **kwargs):
    if ax.get_legend_handles_labels()[0]:  # nothing drawn (one class only): no empty legend box
        ax.legend(fontsize=FONT_SIZE - 2, **kwargs)


def _one_class_note(ax, name):
    ax.text(0.5, 0.5, f"{name}: one class only,\nno curve", ha="center", va="center", transform=ax.transAxes,
            fontsize=FONT_SIZE)


def _scorable_levels(ax, frame: pd.DataFrame):
    """(name, table) of each level that has both classes; a level with one class gets its note on ax."""
    for name, part in levels(frame).items():
        if part["label"].nunique() < 2:
            _one_class_note(ax, name)
        else:
            yield name, part


# --------------------------------------------------------------------------------------------
# training curves
# --------------------------------------------------------------------------------------------
def training_curves(history: pd.DataFrame, best_epoch: int | None = None):
    """Loss, AUC, accuracy (train solid, validation dashed) and the learning rate per epoch.

    history: the run's history.csv (CSVLogger: `epoch` counts from 0); best_epoch: metrics.json's
    `best_epoch` (counts from 1), marked by a vertical line and a dot on the validation AUC.
    """
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    epochs = history["epoch"].to_numpy() + 1
    panels = [m for m in ("loss", "auc", "accuracy") if m in history or f"val_{m}" in history]
    if "learning_rate" in history:
        panels.append("learning_rate")
    cols = 2
    rows = max(1, -(-len(panels) // cols))
    fig = new_figure(4.2 * cols, 3.0 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax, metric in zip(axes, panels):
        if metric == "learning_rate":
            rates = history[metric].to_numpy(float)
            ax.plot(epochs, rates, "o-", color="tab:green", markersize=3)
            if rates.min() > 0 and rates.max() / rates.min() > 10:  # decades of decay read on a log axis
                ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
            ax.set_title("learning rate (at the end of each epoch)")
        else:
            for column, style, name in ((metric, "o-", "train"), (f"val_{metric}", "s--", "validation")):
                if column in history:
                    ax.plot(epochs, history[column], style, markersize=3, label=name)
            ax.set_title(metric if metric != "auc" else "ROC AUC")
            ax.legend(fontsize=FONT_SIZE - 1)
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", linestyle=":", linewidth=1)
            if metric == "auc" and "val_auc" in history and best_epoch in epochs:
                value = float(history["val_auc"].to_numpy()[list(epochs).index(best_epoch)])
                ax.plot([best_epoch], [value], "*", color="crimson", markersize=12,
                        label=f"best epoch {best_epoch}: {value:.3f}")
                ax.legend(fontsize=FONT_SIZE - 1)
        ax.set_xlabel("epoch")
        if len(epochs) <= 20:  # epochs are whole numbers: one tick each while they fit
            ax.set_xticks(epochs)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        _font(ax)
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    title = f"training history, {len(epochs)} epochs"
    fig.suptitle(title + (f" (dotted line: best epoch {best_epoch}, by validation AUC)" if best_epoch else ""),
                 fontsize=FONT_SIZE + 1)
    return fig


# --------------------------------------------------------------------------------------------
# ROC and precision-recall with the operating point
# --------------------------------------------------------------------------------------------
def roc(frame: pd.DataFrame, threshold: float, split: str = "test"):
    """ROC curves at image and study level; a marker at the threshold's (1 - specificity, sensitivity)."""
    from sklearn.metrics import RocCurveDisplay

    fig = new_figure(5.0, 5.0)
    ax = fig.subplots()
    for name, part in _scorable_levels(ax, frame):
        RocCurveDisplay.from_predictions(part["label"], part["probability"], ax=ax,
                                         name=f"{name} ({_counts(part)})",
                                         curve_kwargs=LEVEL_STYLE[name])
        point = operating_point(part["label"], part["probability"], threshold)
        ax.plot([1 - point["specificity"]], [point["sensitivity"]], "o", markersize=8, markeredgecolor="black",
                label=f"{name} at {threshold:g}: sens {point['sensitivity']:.2f}, spec {point['specificity']:.2f}",
                **LEVEL_STYLE[name])
    ax.plot([0, 1], [0, 1], ":", color="grey", label="chance")
    ax.set(xlabel="1 - specificity (false positive rate)", ylabel="sensitivity (true positive rate)",
           xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), aspect="equal", title=f"ROC, {split} split")
    _legend(ax, loc="lower right")
    ax.grid(alpha=0.3)
    _font(ax)
    return fig


def precision_recall(frame: pd.DataFrame, threshold: float, split: str = "test"):
    """Precision-recall curves at image and study level (dotted: the prevalence, a no-skill model)
    with a marker at the threshold's (sensitivity, precision)."""
    from sklearn.metrics import PrecisionRecallDisplay

    fig = new_figure(5.0, 5.0)
    ax = fig.subplots()
    for name, part in _scorable_levels(ax, frame):
        PrecisionRecallDisplay.from_predictions(part["label"], part["probability"], ax=ax,
                                                name=f"{name} ({_counts(part)})", curve_kwargs=LEVEL_STYLE[name])
        prevalence = float(part["label"].mean())
        ax.axhline(prevalence, linestyle=":", linewidth=1, label=f"{name} prevalence {prevalence:.2f}",
                   **LEVEL_STYLE[name])
        point = operating_point(part["label"], part["probability"], threshold)
        ax.plot([point["sensitivity"]], [point["precision"]], "o", markersize=8, markeredgecolor="black",
                label=f"{name} at {threshold:g}: recall {point['sensitivity']:.2f}, precision "
                      + ("n/a (none called abnormal)" if np.isnan(point["precision"]) else f"{point['precision']:.2f}"),
                **LEVEL_STYLE[name])
    ax.set(xlabel="recall (sensitivity)", ylabel="precision (positive predictive value)",
           xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), aspect="equal", title=f"precision-recall, {split} split")
    _legend(ax, loc="lower left")
    ax.grid(alpha=0.3)
    _font(ax)
    return fig


# --------------------------------------------------------------------------------------------
# calibration
# --------------------------------------------------------------------------------------------
def calibration(frame: pd.DataFrame, split: str = "test", n_bins: int = 10, threshold: float | None = None):
    """Reliability diagram (fraction abnormal per bin of predicted probability, uniform bins; the
    Brier score in the legend) over the histogram of image-level probabilities by true class."""
    from sklearn.calibration import CalibrationDisplay
    from sklearn.metrics import brier_score_loss

    fig = new_figure(5.0, 6.2)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1.2])
    for name, part in levels(frame).items():
        if part["label"].nunique() < 2:
            continue
        brier = brier_score_loss(part["label"], part["probability"])
        CalibrationDisplay.from_predictions(part["label"], part["probability"], n_bins=n_bins, ax=top,
                                            name=f"{name} ({_counts(part)}), Brier {brier:.3f}",
                                            **LEVEL_STYLE[name])
    top.set(xlabel="", ylabel="fraction abnormal (observed)", xlim=(-0.02, 1.02), ylim=(-0.02, 1.02),
            title=f"reliability diagram, {split} split, {n_bins} bins")
    _legend(top, loc="upper left")
    top.grid(alpha=0.3)
    bins = np.linspace(0, 1, n_bins + 1)
    bottom.hist([frame.loc[frame["label"] == value, "probability"] for value in (0, 1)], bins=bins,
                color=["tab:gray", "tab:red"], label=[f"{NORMAL} images", f"{ABNORMAL} images"])  # side by side
    if threshold is not None:
        bottom.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:.3g}")
    bottom.set(xlabel="predicted probability of fracture", ylabel="images")
    _legend(bottom)
    for ax in (top, bottom):
        _font(ax)
    return fig


# --------------------------------------------------------------------------------------------
# confusion matrices
# --------------------------------------------------------------------------------------------
def confusion_counts(labels, probabilities, threshold: float) -> np.ndarray:
    """[[TN, FP], [FN, TP]] by the run's decision rule (rows: truth, columns: prediction)."""
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(np.asarray(labels).astype(int), is_abnormal(probabilities, threshold).astype(int),
                            labels=[0, 1])


def confusion_matrices(frame: pd.DataFrame, threshold: float, split: str = "test"):
    """Image- and study-level confusion matrices side by side, counts and row percentages."""
    from sklearn.metrics import ConfusionMatrixDisplay

    fig = new_figure(8.4, 4.0)
    axes = fig.subplots(1, 2)
    for ax, (name, part) in zip(axes, levels(frame).items()):
        counts = confusion_counts(part["label"], part["probability"], threshold)
        display = ConfusionMatrixDisplay(counts, display_labels=[NORMAL, ABNORMAL])
        display.plot(ax=ax, colorbar=False, cmap="Blues", values_format="d")
        rows = counts.sum(axis=1, keepdims=True)
        for (i, j), text in np.ndenumerate(display.text_):  # counts, then the share of the true class
            share = counts[i, j] / rows[i, 0] if rows[i, 0] else float("nan")
            text.set_text(f"{counts[i, j]}\n({share:.0%})")
            text.set_fontsize(FONT_SIZE + 1)
        ax.set_title(f"{name} level (n={counts.sum()})")
        ax.set(xlabel="predicted", ylabel="true")
        _font(ax)
    fig.suptitle(f"{split} split, abnormal when p > {threshold:g}", fontsize=FONT_SIZE + 1)
    return fig


# --------------------------------------------------------------------------------------------
# all of them
# --------------------------------------------------------------------------------------------
def save_plots(history: pd.DataFrame | None, frame: pd.DataFrame, scores: dict | None, out_dir, threshold: float,
               split: str = "test", best_epoch: int | None = None, dpi: int = DPI) -> list[Path]:
    """The run's figures as PNG: `curves.png` in out_dir (skipped when history is None: an ensemble
    or a re-evaluation), and the split's figures of `FILES` in out_dir/<split>/, so val (written by
    train, used for selection) and test (written once by evaluate) never overwrite each other.
    `scores` is accepted for the old signature and unused (the figures compute from `frame`)."""
    out_dir = Path(out_dir)
    figures = {
        out_dir / split / "roc.png": lambda: roc(frame, threshold, split),
        out_dir / split / "precision_recall.png": lambda: precision_recall(frame, threshold, split),
        out_dir / split / "calibration.png": lambda: calibration(frame, split, threshold=threshold),
        out_dir / split / "confusion_matrix.png": lambda: confusion_matrices(frame, threshold, split),
    }
    if history is not None:
        figures = {out_dir / CURVES: lambda: training_curves(history, best_epoch), **figures}
    return [save_figure(make(), path, dpi) for path, make in figures.items()]
