"""MURA-protocol evaluation at image and study level, with scikit-learn's metrics, and plots.

Image level and study level (a study's probability is the mean of its images',
`scores.study_level`), all metrics from scikit-learn; the figures come from fracture/plots.py."""

from __future__ import annotations

import json
import logging
from datetime import datetime

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from fracture import determinism, diskspace, plots, portable, runlock, stats, tracking
from fracture.config import Config
from fracture.data import expand_image_paths, load_images, load_index, predict_batches, split_arrays
from fracture.errors import DataError
from fracture.fileio import atomic_path, atomic_write_text
from fracture.scores import is_abnormal, label, study_level

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------
def binary_metrics(labels, probabilities, threshold: float = 0.5, clusters=None, resamples: int = 0,
                   seed: int = 0, unit: str = "patient") -> dict:
    """accuracy, sensitivity, specificity, ROC AUC, Cohen's kappa, confusion matrix, report, and with
    resamples > 0 a 95 % bootstrap interval `<metric>_ci` for each of the five (fracture/stats.py)."""
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
        **(stats.bootstrap_intervals(labels, probabilities, threshold, clusters, resamples, seed, unit)
           if resamples > 0 else {}),
    }


def score_frame(frame: pd.DataFrame, threshold: float, resamples: int = 0, seed: int = 0,
                by_type: bool = True) -> dict:
    """Image- and study-level metrics for a table with label and probability columns (and study).

    Intervals (resamples > 0) resample patients at both levels, so the images and studies of one
    patient move together; a table without patients resamples studies. A table holding several
    study types (study_type=all, or a list) also gets `by_study_type`: the same two levels, every
    metric with its interval, for each type alone (MURA's Table 2 is per type)."""
    studies = study_level(frame)
    unit = "patient" if "patient" in frame else "study"
    scores = {"image": binary_metrics(frame["label"], frame["probability"], threshold, frame[unit], resamples,
                                      seed, unit),
              "study": binary_metrics(studies["label"], studies["probability"], threshold, studies[unit],
                                      resamples, seed, unit)}
    types = sorted(t for t in frame["study_type"].unique() if t) if by_type and "study_type" in frame else []
    if len(types) > 1:
        scores["by_study_type"] = {t: score_frame(frame[frame["study_type"] == t], threshold, resamples, seed,
                                                  by_type=False) for t in types}
    return scores


SUMMARY_KEYS = ("n", "accuracy", "sensitivity", "specificity", "auc", "kappa")


def _levels(scores: dict) -> dict:
    """The level entries of a split's scores (image, study), without its notes (final, threshold...)."""
    return {level: m for level, m in scores.items() if isinstance(m, dict) and "n" in m}


def summary_table(scores: dict) -> pd.DataFrame:
    """{'image': {...}, 'study': {...}} -> a small table, one row per level (n as an integer)."""
    table = pd.DataFrame({level: {k: m[k] for k in SUMMARY_KEYS} for level, m in _levels(scores).items()}).T
    return table.astype({"n": int})


def format_table(scores: dict) -> str:
    """The summary table as text: `0.91 (0.87–0.94)` where an interval exists, `0.913` where not,
    then one line per level whose split was too small for intervals."""
    levels = _levels(scores)
    rows = {}
    for level, m in levels.items():
        rows[level] = {"n": str(int(m["n"]))}
        for key in SUMMARY_KEYS[1:]:
            ci = m.get(f"{key}_ci")
            rows[level][key] = f"{m[key]:.2f} ({ci[0]:.2f}\u2013{ci[1]:.2f})" if ci else f"{m[key]:.3f}"
    text = pd.DataFrame(rows).T.to_string()
    notes = [f"{level}: {m['ci_note']}" for level, m in levels.items() if m.get("ci_note")]
    if any(m.get("ci_method") for m in levels.values()):
        notes.append(f"intervals: {next(m['ci_method'] for m in levels.values() if m.get('ci_method'))}")
    return "\n".join([text, *notes])


# The MURA paper's Table 2 (Rajpurkar et al. 2017, arXiv 1712.06957): the DenseNet-169 model's
# study-level Cohen's kappa per study type, {type: kappa}. The paper's PDF could not be read where
# this was written; two independent quotations of it agree on these figures (docs/data.md). Its
# confidence intervals are not entered: "see the paper".
PAPER_TABLE2: dict[str, float] = {"XR_ELBOW": 0.710, "XR_FINGER": 0.389, "XR_FOREARM": 0.737, "XR_HAND": 0.851,
                                  "XR_HUMERUS": 0.600, "XR_SHOULDER": 0.729, "XR_WRIST": 0.931, "Overall": 0.705}
PAPER_ROWS = ("XR_ELBOW", "XR_FINGER", "XR_FOREARM", "XR_HAND", "XR_HUMERUS", "XR_SHOULDER", "XR_WRIST")


def _kappa_cell(m: dict) -> str:
    ci = m.get("kappa_ci")
    return f"{m['kappa']:.3f} ({ci[0]:.3f}, {ci[1]:.3f})" if ci else f"{m['kappa']:.3f}"


def format_study_type_table(scores: dict) -> str:
    """`by_study_type` in the layout of the MURA paper's Table 2: one row per study type, in the
    paper's order, then Overall; our study-level kappa with its 95% CI (the paper's statistic) and
    the paper's model kappa beside it, plus our study count and AUC. '' when there is no breakdown."""
    by_type = scores.get("by_study_type")
    if not by_type:
        return ""
    order = [t for t in PAPER_ROWS if t in by_type] + sorted(t for t in by_type if t not in PAPER_ROWS)
    rows = []
    for name, m in [*((t, by_type[t]["study"]) for t in order), ("Overall", scores["study"])]:
        paper = PAPER_TABLE2.get(name)
        rows.append({"study type": name.removeprefix("XR_").capitalize() if name != "Overall" else name,
                     "studies": str(int(m["n"])), "kappa (95% CI)": _kappa_cell(m),
                     "AUC": "n/a" if np.isnan(m["auc"]) else f"{m['auc']:.3f}",
                     "paper model kappa": f"{paper:.3f}" if paper is not None else "not in paper"})
    text = pd.DataFrame(rows).to_string(index=False)
    notes = ["study level (a study's probability is the mean of its images'), as the paper's Table 2;",
             "paper: Rajpurkar et al. 2017, MURA, arXiv 1712.06957, Table 2 (DenseNet-169 on the 207-study "
             "test set read by radiologists; ours is a different test set)"]
    notes.append("the paper's confidence intervals for its kappas: see the paper")
    return "\n".join([text, *notes])


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
    return model.predict(predict_batches(images, batch_size), verbose=0).reshape(-1)[:n]


def predict_paths(model_or_run, paths, batch_size: int = 16, max_pixels: int | None = None) -> pd.DataFrame:
    """Probability and label for image files (or folders of them), one row per file in input order.

    Unreadable files keep their row: probability NaN, label "unreadable" and the decoder's reason
    in `reason` (empty for the others). `max_pixels` defaults to the run's config.
    """
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
    if hasattr(model_or_run, "model"):  # a Run
        return model_or_run.model, model_or_run.threshold, model_or_run.config.max_pixels
    defaults = Config()
    return model_or_run, defaults.threshold, defaults.max_pixels


def choose_threshold(frame: pd.DataFrame, cfg) -> tuple[float, str]:
    """(threshold, rule) for threshold=auto, from a validation predictions table: chosen at study
    level, where the MURA protocol makes its decision (Youden's J, or cfg.target_sensitivity)."""
    studies = study_level(frame)
    if studies["label"].nunique() < 2:
        raise DataError("threshold=auto needs abnormal and normal studies in the validation split; "
                        "set a number, e.g. threshold=0.5")
    threshold, rule = stats.choose_threshold(studies["label"], studies["probability"], cfg.target_sensitivity)
    return threshold, f"{rule}, study level"


def evaluate(run_or_path, cfg=None, split: str = "val", write: bool = True, show=None,
             mlflow_run: str | None = None) -> dict:
    """Re-evaluate a saved run (path or Run) on a split of its data; returns the scores and,
    with write=True, stores them in the run's metrics.json under `split`.

    The default is the validation split: the test split is spent only when asked for by name.

    The test split is the final, held-out report: stored with `final: true`, the time, and how
    often it was evaluated; a second evaluation warns (choosing anything by test biases it).
    threshold=auto takes the threshold chosen on validation (choosing it first when missing).

    show(scores), when given, is called before anything is written, so the scores reach the user
    even when the run folder cannot be written (that is then a StorageError saying so).
    mlflow_run: see tracking.log_evaluation (a copied run folder logs to MLflow only when asked).
    """
    from fracture.runs import Run, load_run  # here, not at the top: it loads Keras, which this module does not

    run = run_or_path if isinstance(run_or_path, Run) else load_run(run_or_path)
    cfg = cfg or run.config
    portable.require_data(cfg, run.path, "evaluate")
    if cfg.deterministic:  # the run's predictions repeat exactly, as its training did
        determinism.enable(cfg.seed)
    arrays = split_arrays(load_index(cfg), cfg)
    if split not in arrays:
        raise DataError(f"the data at {cfg.data_dir} has no '{split}' split")
    frame, images, _ = arrays[split]
    frame = frame.assign(probability=predict_images(run.model, images, cfg.batch_size))
    stored = dict(run.metrics)
    if cfg.threshold != "auto":
        threshold = float(cfg.threshold)
    elif split != "val" and run.config.threshold == "auto" and "threshold" in stored:
        threshold = float(stored["threshold"])  # the run's own choice, made on validation
    else:  # choose on validation now (an override to auto, or a val re-evaluation)
        if "val" not in arrays:
            raise DataError(f"threshold=auto needs the 'val' split, and {cfg.data_dir} has none: pass threshold=0.5")
        val = frame if split == "val" else arrays["val"][0].assign(
            probability=predict_images(run.model, arrays["val"][1], cfg.batch_size))
        threshold, rule = choose_threshold(val, cfg)
        if run.config.threshold == "auto":  # the run's stored choice; an override leaves it alone
            stored.update(threshold=threshold, threshold_rule=rule)
    scores = {**score_frame(frame, threshold, cfg.bootstrap_resamples, cfg.seed), "threshold": threshold}
    if split == "test":
        previous = stored.get("test", {}).get("evaluations", 0) if isinstance(stored.get("test"), dict) else 0
        if previous and write:
            log.warning("the test split of %s was evaluated before (%s): report it, do not choose a model, "
                        "threshold or setting by it (use val for that)", run.name, stored["test"].get("evaluated"))
        scores.update(final=True, evaluated=datetime.now().isoformat(timespec="seconds"),
                      evaluations=previous + 1)
    log.debug("%s split of %s:\n%s", split, run.name, format_table(scores))  # callers show it
    if show is not None:
        show(scores)
    if write:
        _store(run, stored, scores, frame, split, threshold, mlflow_run)
    return scores


def _store(run, stored: dict, scores: dict, frame: pd.DataFrame, split: str, threshold: float,
           mlflow_run: str | None) -> None:
    """predictions_<split>.csv, metrics.json and plots into the run folder (locked), then MLflow."""
    stored[split] = scores
    try:
        with runlock.hold(run.path, f"evaluate --split {split}"):
            with atomic_path(run.path / f"predictions_{split}.csv") as tmp:
                frame.to_csv(tmp, index=False)
            atomic_write_text(run.path / "metrics.json", json.dumps(stored, indent=2))
            plots.save_plots(None, frame, scores, run.path / "plots", threshold, split)
    except (OSError, diskspace.StorageError) as exc:
        storage = diskspace.storage_error(exc, getattr(exc, "filename", None) or run.path)
        if storage is None:
            raise
        raise diskspace.StorageError(f"the {split} scores were computed but not stored in {run.path} "
                                     f"({storage})") from exc
    run.metrics = stored
    if tracking.log_evaluation(run.path, stored, split, [run.path / f"predictions_{split}.csv",
                                                         run.path / "metrics.json"], mlflow_run=mlflow_run):
        tracking.log_artifacts(run.path, [run.path / "plots" / split], artifact_path="plots",
                               mlflow_run=mlflow_run)

