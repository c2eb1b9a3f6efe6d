"""MURA-protocol evaluation: image level and study level (a study's probability is the mean of
its images'), all metrics from scikit-learn, plus plots."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from fracture.fileio import atomic_path, atomic_write_text
from fracture.scores import is_abnormal, label

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------
def binary_metrics(labels, probabilities, threshold: float = 0.5) -> dict:
    """accuracy, sensitivity, specificity, ROC AUC, Cohen's kappa, confusion matrix, report."""
    labels = np.asarray(labels).astype(int)
    probabilities = np.asarray(probabilities, dtype=float)
    predicted = is_abnormal(probabilities, threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(labels, predicted, labels=[0, 1]).ravel()
    both_classes = len(np.unique(labels)) == 2
    return {
        "n": int(len(labels)),
        "accuracy": float(skm.accuracy_score(labels, predicted)),
        "sensitivity": float(skm.recall_score(labels, predicted, pos_label=1, zero_division=0)),
        "specificity": float(skm.recall_score(labels, predicted, pos_label=0, zero_division=0)),
        "auc": float(skm.roc_auc_score(labels, probabilities)) if both_classes else float("nan"),
        "kappa": float(skm.cohen_kappa_score(labels, predicted)) if both_classes else float("nan"),
        "confusion_matrix": [[int(tn), int(fp)], [int(fn), int(tp)]],
        "report": skm.classification_report(labels, predicted, labels=[0, 1], target_names=["normal", "abnormal"],
                                             output_dict=True, zero_division=0),
    }


def study_level(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per study: its label and the mean of its images' probabilities (MURA protocol)."""
    grouped = frame.groupby("study", sort=True)
    labels = grouped["label"].agg(["min", "max"])
    mixed = labels[labels["min"] != labels["max"]]
    if len(mixed):
        raise ValueError(f"images of study {mixed.index[0]} carry different labels")
    return pd.DataFrame({
        "label": labels["max"].astype(int),
        "probability": grouped["probability"].mean(),
        "images": grouped.size(),
    }).reset_index()


def score_frame(frame: pd.DataFrame, threshold: float) -> dict:
    """Image- and study-level metrics for a table with label and probability columns."""
    studies = study_level(frame)
    return {"image": binary_metrics(frame["label"], frame["probability"], threshold),
            "study": binary_metrics(studies["label"], studies["probability"], threshold)}


SUMMARY_KEYS = ("n", "accuracy", "sensitivity", "specificity", "auc", "kappa")


def summary_table(scores: dict) -> pd.DataFrame:
    """{'image': {...}, 'study': {...}} -> a small table, one row per level (n as an integer)."""
    table = pd.DataFrame({level: {k: m[k] for k in SUMMARY_KEYS} for level, m in scores.items()}).T
    return table.astype({"n": int})


def format_table(scores: dict) -> str:
    table = summary_table(scores)
    return table.to_string(float_format=lambda v: f"{v:.3f}")


# --------------------------------------------------------------------------------------------
# predictions
# --------------------------------------------------------------------------------------------
def predict_images(model, images, batch_size: int = 16) -> np.ndarray:
    """Probabilities for uint8 (N, H, W, 1) images. `predict` runs the model with training=False,
    so the in-model augmentation is off."""
    n = len(images)
    if n == 0:
        return np.zeros(0, np.float32)
    # Padded to whole batches (copies of the last image, cut off again): one input shape, so the
    # predict function is traced once per model rather than once more for a short last batch.
    # Batches are read one at a time (a memmap cache is never copied whole into RAM).
    from fracture.data import predict_batches

    return model.predict(predict_batches(images, batch_size), verbose=0).reshape(-1)[:n]


def predict_paths(model_or_run, paths, batch_size: int = 16, max_pixels: int | None = None) -> pd.DataFrame:
    """Probability and label for image files (or folders of them), one row per file in input order.

    Unreadable files keep their row: probability NaN, label "unreadable" and the decoder's reason
    in `reason` (empty for the others). `max_pixels` defaults to the run's config.
    """
    from fracture.data import expand_image_paths, load_images

    model, threshold, run_max_pixels = _model_settings(model_or_run)
    max_pixels = run_max_pixels if max_pixels is None else max_pixels
    files = expand_image_paths(paths)
    size = model.input_shape[1]
    images, ok, skipped = load_images(files, size, max_pixels=max_pixels)
    probabilities = np.full(len(files), np.nan)
    probabilities[ok] = predict_images(model, images[ok], batch_size)
    out = pd.DataFrame({"path": [str(f) for f in files], "probability": probabilities})
    out["label"] = np.where(ok, label(probabilities, threshold), "unreadable")
    out["reason"] = out["path"].map(dict(zip(skipped["path"], skipped["reason"]))).fillna("")
    return out


def _model_settings(model_or_run):
    """(model, threshold, max_pixels): a Run's own settings, else the Config defaults for a bare model."""
    from fracture.config import Config

    if hasattr(model_or_run, "model"):  # a Run
        cfg = model_or_run.config
        return model_or_run.model, cfg.threshold, cfg.max_pixels
    defaults = Config()
    return model_or_run, defaults.threshold, defaults.max_pixels


def evaluate(run_or_path, cfg=None, split: str = "test", write: bool = True) -> dict:
    """Re-evaluate a saved run (path or Run) on a split of its data; returns the scores and,
    with write=True, stores them in the run's metrics.json under `split`."""
    from fracture.data import load_index, split_arrays
    from fracture.model import Run, load_run

    run = run_or_path if isinstance(run_or_path, Run) else load_run(run_or_path)
    cfg = cfg or run.config
    arrays = split_arrays(load_index(cfg), cfg)
    if split not in arrays:
        from fracture.errors import DataError

        raise DataError(f"the data at {cfg.data_dir} has no '{split}' split")
    frame, images, _ = arrays[split]
    frame = frame.assign(probability=predict_images(run.model, images, cfg.batch_size))
    scores = score_frame(frame, cfg.threshold)
    log.debug("%s split of %s:\n%s", split, run.name, format_table(scores))  # callers show it
    if write:
        stored = dict(run.metrics)
        stored[split] = scores
        with atomic_path(run.path / f"predictions_{split}.csv") as tmp:
            frame.to_csv(tmp, index=False)
        atomic_write_text(run.path / "metrics.json", json.dumps(stored, indent=2))
    return scores


# --------------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------------
def save_plots(history: pd.DataFrame, frame: pd.DataFrame, scores: dict, out_dir, threshold: float,
               split: str = "test") -> list[Path]:
    """Loss/AUC curves, ROC (image and study level) and the confusion matrix of `split`, as PNG files."""
    # Figure objects, not pyplot: no global backend switch, so a notebook's inline plots keep working.
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    for ax, metric in zip(axes, ("loss", "auc")):
        for column, style in ((metric, "-"), (f"val_{metric}", "--")):
            if column in history:
                ax.plot(history["epoch"] + 1, history[column], style, label=column)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.set_title(metric)
        ax.legend()
    written.append(_save(fig, out_dir / "curves.png"))

    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    studies = study_level(frame)
    for name, part in (("image", frame), ("study", studies)):
        if part["label"].nunique() == 2:
            fpr, tpr, _ = skm.roc_curve(part["label"], part["probability"])
            ax.plot(fpr, tpr, label=f"{name} AUC {scores[name]['auc']:.3f}")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=f"ROC ({split})")
    ax.legend(loc="lower right")
    written.append(_save(fig, out_dir / "roc.png"))

    fig = Figure(figsize=(4, 4))
    ax = fig.subplots()
    skm.ConfusionMatrixDisplay(np.array(scores["image"]["confusion_matrix"]),
                               display_labels=["normal", "abnormal"]).plot(ax=ax, colorbar=False)
    ax.set_title(f"{split}, image level, threshold {threshold}")
    written.append(_save(fig, out_dir / "confusion_matrix.png"))
    return written


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)  # a Figure without pyplot needs no close(): nothing else holds it
    return path
