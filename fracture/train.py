"""`train(cfg) -> run_dir`: data -> model -> fit with Keras callbacks -> evaluation -> run folder.

saved_models/<run>/
  model.keras       best epoch by validation AUC (ModelCheckpoint)
  config.yaml       the fully resolved config
  history.csv       per-epoch metrics (CSVLogger)
  metrics.json      image- and study-level scores on val and test, timings
  predictions_test.csv, skipped.csv (when any file was unreadable), plots/*.png
  mlflow_run_id.txt MLflow run id and store URI (cfg.mlflow; see fracture/tracking.py)
  backup/           BackupAndRestore state while training: re-running the same run_name resumes
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from fracture import data as data_lib
from fracture import tracking
from fracture.errors import DataError, FractureError

log = logging.getLogger(__name__)


def new_run_dir(cfg) -> Path:
    """runs_dir/run_name, or a fresh timestamped folder when run_name is empty."""
    if cfg.run_name:
        return Path(cfg.runs_dir) / cfg.run_name
    stem = f"{datetime.now():%Y%m%d-%H%M%S}-{cfg.backbone.lower()}"
    run_dir, n = Path(cfg.runs_dir) / stem, 1
    while run_dir.exists():
        n += 1
        run_dir = Path(cfg.runs_dir) / f"{stem}-{n}"
    return run_dir


def class_weights(frame: pd.DataFrame) -> dict[int, float]:
    """MURA paper weighting from *study* counts: positives |N|/(|A|+|N|), negatives |A|/(|A|+|N|)."""
    studies = frame.groupby("study")["label"].first()
    abnormal, normal = int(studies.sum()), int((1 - studies).sum())
    total = abnormal + normal
    return {1: normal / total, 0: abnormal / total}


def compile_model(model, cfg) -> None:
    import keras

    settings = {"learning_rate": cfg.learning_rate}
    if cfg.optimizer.lower() == "sgd":
        settings.update(momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    elif cfg.optimizer.lower() == "rmsprop":
        settings.update(momentum=cfg.momentum)
    optimizer = keras.optimizers.get({"class_name": cfg.optimizer, "config": settings})
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.BinaryCrossentropy(),
        metrics=[keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy(name="accuracy",
                                                                             threshold=cfg.threshold)],
        steps_per_execution=cfg.steps_per_execution,
    )


def make_callbacks(cfg, run_dir: Path) -> list:
    import keras

    gamma = cfg.gamma
    callbacks = [
        keras.callbacks.BackupAndRestore(str(run_dir / "backup")),
        keras.callbacks.ModelCheckpoint(str(run_dir / "model.keras"), monitor="val_auc", mode="max",
                                        save_best_only=True),
        # Multiply the current rate (not the initial one) so a plateau reduction sticks.
        keras.callbacks.LearningRateScheduler(lambda epoch, lr: lr if epoch == 0 else lr * gamma),
        keras.callbacks.TerminateOnNaN(),
    ]
    if cfg.early_stopping:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_auc", mode="max",
                                                       patience=cfg.early_stopping, restore_best_weights=False))
    if cfg.plateau_patience:
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.1,
                                                           patience=cfg.plateau_patience))
    # Last, so the row it writes includes what the callbacks above added (learning_rate).
    callbacks.append(keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True))
    return callbacks


def train(cfg) -> Path:
    from fracture import preflight

    frame = preflight.check(cfg)  # before Keras is imported and before any folder exists
    import keras

    keras.utils.set_random_seed(cfg.seed)
    run_dir = new_run_dir(cfg)
    resuming = (run_dir / "backup").is_dir()
    if (run_dir / "model.keras").is_file() and not resuming:
        raise FractureError(f"run {run_dir} is already complete; pick another run_name or delete that folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.run_name = run_dir.name
    cfg.to_yaml(run_dir / "config.yaml")
    log.info("%s run %s", "resuming" if resuming else "starting", run_dir)

    tracker = tracking.start(cfg, run_dir, frame) if cfg.mlflow else None  # None: off or unreachable
    try:
        metrics, best = _fit_and_evaluate(cfg, run_dir, frame, tracker)
    except BaseException as exc:  # the MLflow run ends FAILED (KILLED on Ctrl-C); the error goes on
        if tracker is not None:
            tracker.fail(exc)
        raise
    if tracker is not None:
        tracker.finish(metrics, run_dir, best)
    log.info("run folder: %s", run_dir)
    return run_dir


def _fit_and_evaluate(cfg, run_dir: Path, frame: pd.DataFrame, tracker) -> tuple[dict, object]:
    """Decode, fit, evaluate: writes every run-folder file but config.yaml; returns (metrics, best model)."""
    from fracture.evaluate import predict_images, save_plots, score_frame, format_table
    from fracture.model import build_model, count_params, load_model

    model = build_model(cfg)  # first: a weights download or error comes before minutes of decoding
    arrays = data_lib.split_arrays(frame, cfg)
    skipped = arrays.pop("skipped")
    if len(skipped):
        skipped.to_csv(run_dir / "skipped.csv", index=False)
    log.info("skipped %d unreadable files%s", len(skipped), f" (see {run_dir / 'skipped.csv'})" if len(skipped) else "")
    for needed in ("train", "val"):
        if needed not in arrays or not len(arrays[needed][1]):
            raise DataError(f"no readable '{needed}' images in {cfg.data_dir}")
    train_frame, x_train, y_train = arrays["train"]
    _, x_val, y_val = arrays["val"]

    weights = class_weights(train_frame) if cfg.class_weighting else {0: 1.0, 1: 1.0}
    sample_weights = np.where(y_train == 1, weights[1], weights[0]).astype(np.float32)
    train_batches = data_lib.make_batches(x_train, y_train, cfg.batch_size, shuffle=True, seed=cfg.seed,
                                          sample_weights=sample_weights)
    val_batches = data_lib.make_batches(x_val, y_val, cfg.batch_size, shuffle=False)

    compile_model(model, cfg)
    trainable, frozen = count_params(model)
    callbacks = make_callbacks(cfg, run_dir)
    if tracker is not None:
        callbacks.append(tracker.callback())

    started = time.perf_counter()
    model.fit(train_batches, validation_data=val_batches, epochs=cfg.epochs, callbacks=callbacks, verbose=2)
    train_seconds = time.perf_counter() - started

    history = pd.read_csv(run_dir / "history.csv")
    best = load_model(run_dir / "model.keras")
    metrics = {
        "run": run_dir.name,
        "best_epoch": int(history.loc[history["val_auc"].idxmax(), "epoch"]) + 1,
        "epochs_run": int(len(history)),
        "train_seconds": round(train_seconds, 1),
        "train_images_per_second": round(len(x_train) * len(history) / max(train_seconds, 1e-9), 2),
        "trainable_params": trainable,
        "frozen_params": frozen,
        "class_weights": {str(k): v for k, v in weights.items()},
        "counts": {split: int(len(a[1])) for split, a in arrays.items()},
        "skipped_files": int(len(skipped)),
    }
    scored = {}
    for split in ("val", "test"):
        if split in arrays:
            part, images, _ = arrays[split]
            scored[split] = part.assign(probability=predict_images(best, images, cfg.batch_size))
            metrics[split] = score_frame(scored[split], cfg.threshold)
            scored[split].to_csv(run_dir / f"predictions_{split}.csv", index=False)
            log.info("%s:\n%s", split, format_table(metrics[split]))
    plot_split = "test" if "test" in scored else "val"  # ROC and confusion matrix of the held-out data
    save_plots(history, scored[plot_split], metrics[plot_split], run_dir / "plots", cfg.threshold, plot_split)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics, best
