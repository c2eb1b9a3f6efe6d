"""`python -m fracture cv folds=5 [key=value ...]`: patient-level k-fold cross-validation.

Fold k is an ordinary training run with `fold=k` (fracture/data.py: StratifiedGroupKFold, patients
as groups, stratified by label), so each fold is resumable and a complete one is skipped when the
command is run again with the same run_name:

runs_dir/
  <name>-fold0/ ... <name>-fold<k-1>/   one run folder per fold (see fracture/training.py)
  <name>/cv.json                        per-fold validation scores, mean and sd over folds, pooled out-of-fold
  <name>/oof_predictions.csv            every fold's predictions_val.csv, with a `fold` column
  <name>/mlflow_run_id.txt              the MLflow parent run (mlflow=true); each fold's run is its child

Per-fold scores are the folds' own validation predictions scored with fracture.evaluation.score_frame
(nothing is predicted again); "pooled" scores all out-of-fold predictions together, once.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from datetime import datetime
from pathlib import Path

import pandas as pd

from fracture import config as config_lib
from fracture import fileio, preflight, runkind, runlock, tracking, training
from fracture.errors import ConfigError, FractureError

log = logging.getLogger(__name__)

METRIC_KEYS = ("auc", "kappa", "accuracy", "sensitivity", "specificity")  # averaged over folds
LEVELS = ("image", "study")
SUMMARY_FILE = "cv.json"
OOF_FILE = "oof_predictions.csv"


def cv_name(cfg) -> str:
    """run_name, or a fresh `cv-<timestamp>-<backbone>` (rerun with run_name=<that> to resume)."""
    return cfg.run_name or f"cv-{datetime.now():%Y%m%d-%H%M%S}-{cfg.backbone.lower()}"


def fold_config(cfg, name: str, fold: int):
    return dataclasses.replace(cfg, fold=fold, run_name=f"{name}-fold{fold}")


def cross_validate(cfg) -> tuple[Path, dict]:
    """Train (or skip, when complete) one run per fold, then summarise; returns (cv folder, summary)."""
    if cfg.fold != -1:
        raise ConfigError(f"cv trains every fold itself: drop fold={cfg.fold} (`python -m fracture train "
                          f"fold={cfg.fold}` trains that one fold)")
    if cfg.threshold == "auto":  # each fold would pick its threshold on the very images it is scored on
        raise ConfigError("cv scores each fold on its validation patients, so threshold=auto would choose the "
                          "threshold on the data it reports: give a number (threshold=0.5), or choose it on "
                          "the pooled out-of-fold predictions afterwards")
    name = cv_name(cfg)
    config_lib.check_run_name(f"{name}-fold{cfg.folds - 1}")
    frame = preflight.check(fold_config(cfg, name, 0))  # too few patients for the folds fails here, in seconds
    cv_dir = Path(cfg.runs_dir) / name

    with runlock.hold(cv_dir, "cv"):  # a second `cv` of this name stops here; each fold has its own lock too
        return _cross_validate(cfg, name, cv_dir, frame)


def _cross_validate(cfg, name: str, cv_dir: Path, frame) -> tuple[Path, dict]:
    from fracture import resume  # here, not at the top: it loads Keras, which this module does not

    info = runkind.read(cv_dir)
    if cv_dir.exists() and any(cv_dir.iterdir()) and info.get("kind") != "cv":
        raise FractureError(f"{cv_dir} exists and is not a cross-validation folder: pick another run_name")
    cv_dir.mkdir(parents=True, exist_ok=True)
    cfg = dataclasses.replace(cfg, run_name=name)
    # A resumed cv skips its complete folds: with other settings it would pool folds of two
    # trainings, so it is held to the train verb's resume rule before its config is rewritten.
    if (cv_dir / "config.yaml").is_file():
        resume.check_same_config(cv_dir, cfg)
    cfg.to_yaml(cv_dir / "config.yaml")
    # Written first: a hint about this unfinished folder names this command, never `train` into it.
    runkind.write(cv_dir, "cv", ["python", "-m", "fracture", "cv", "--config", str(cv_dir / "config.yaml")])
    log.info("cross-validation %s: %d patient folds (rerun with run_name=%s to resume)", name, cfg.folds, name)
    pool = frame[frame["split"].isin(["train", "val"])]
    parent = tracking.start(cfg, cv_dir, pool) if cfg.mlflow else None
    try:
        run_dirs = []
        for k in range(cfg.folds):
            fold_cfg = fold_config(cfg, name, k)
            run_dir = Path(cfg.runs_dir) / fold_cfg.run_name
            if resume.is_complete(run_dir):
                log.info("fold %d: %s is complete, skipped", k, run_dir)
            else:
                log.info("fold %d of %d: %s", k + 1, cfg.folds, run_dir)
                training.train(fold_cfg)
            if parent is not None:
                parent.adopt(run_dir)
            run_dirs.append(run_dir)
        summary, oof = summarize(run_dirs, cfg.threshold)
    except BaseException as exc:
        if parent is not None:
            parent.fail(exc)
        raise
    with fileio.atomic_path(cv_dir / OOF_FILE) as tmp:
        oof.to_csv(tmp, index=False)
    fileio.atomic_write_text(cv_dir / SUMMARY_FILE, json.dumps(summary, indent=2, default=float))
    resume.write_marker(cv_dir, {"run": name})  # complete: like any run folder (its folds hold the models)
    if parent is not None:
        parent.finish_parent(parent_metrics(summary), [cv_dir / SUMMARY_FILE, cv_dir / OOF_FILE])
    return cv_dir, summary


def summarize(run_dirs, threshold: float) -> tuple[dict, pd.DataFrame]:
    """Per-fold validation scores, their mean and sd (ddof=1, NaN folds left out), and the pooled
    out-of-fold scores; plus the pooled predictions table."""
    from fracture.evaluation import score_frame  # here, not at the top: it loads sklearn, which this module does not

    parts, per_fold = [], []
    for k, run_dir in enumerate(map(Path, run_dirs)):
        csv = run_dir / "predictions_val.csv"
        if not csv.is_file():
            raise FractureError(f"{csv} is missing: fold {k} did not finish its validation predictions")
        part = pd.read_csv(csv).assign(fold=k)
        parts.append(part)
        per_fold.append({"fold": k, "run": run_dir.name, "val": score_frame(part, threshold)})
    oof = pd.concat(parts, ignore_index=True)
    if oof["path"].duplicated().any():
        raise FractureError("an image is in the validation split of two folds: these runs are not one "
                            "cross-validation (same data_dir, seed and folds?)")
    table = fold_table(per_fold)
    summary = {
        "folds": len(run_dirs),
        "threshold": threshold,
        "per_fold": per_fold,
        "mean": {level: {key: table[f"{level}_{key}"].mean() for key in METRIC_KEYS} for level in LEVELS},
        "sd": {level: {key: table[f"{level}_{key}"].std(ddof=1) for key in METRIC_KEYS} for level in LEVELS},
        "pooled": score_frame(oof, threshold),
    }
    return summary, oof


def fold_table(per_fold: list[dict]) -> pd.DataFrame:
    """One row per fold, columns <level>_<metric>."""
    return pd.DataFrame([{f"{level}_{key}": fold["val"][level][key] for level in LEVELS for key in METRIC_KEYS}
                         for fold in per_fold])


def parent_metrics(summary: dict) -> dict:
    """What the MLflow parent run charts: val_<level>_<metric>_mean/_sd and oof_<level>_<metric>."""
    values = {}
    for level in LEVELS:
        for key in METRIC_KEYS:
            values[f"val_{level}_{key}_mean"] = summary["mean"][level][key]
            values[f"val_{level}_{key}_sd"] = summary["sd"][level][key]
            values[f"oof_{level}_{key}"] = summary["pooled"][level][key]
    return values


def format_summary(summary: dict) -> str:
    """Per level: one row per fold, then `mean ± sd` and the pooled out-of-fold row."""
    blocks = []
    for level in LEVELS:
        rows = {f"fold {f['fold']}": [f["val"][level][k] for k in METRIC_KEYS] for f in summary["per_fold"]}
        rows["mean ± sd"] = [f"{summary['mean'][level][k]:.3f} ± {summary['sd'][level][k]:.3f}" for k in METRIC_KEYS]
        rows["pooled OOF"] = [summary["pooled"][level][k] for k in METRIC_KEYS]
        table = pd.DataFrame(rows, index=METRIC_KEYS).T
        shown = table.map(lambda v: v if isinstance(v, str) else f"{v:.3f}")
        blocks.append(f"{level} level (validation folds):\n{shown.to_string()}")
    return "\n\n".join(blocks)


def cli_cv(args) -> None:
    cfg = config_lib.load(args.config, args.overrides)
    cv_dir, summary = cross_validate(cfg)
    print(format_summary(summary))
    print(f"cross-validation summary: {cv_dir / SUMMARY_FILE}")
