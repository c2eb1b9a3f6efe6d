"""`train(cfg) -> run_dir`: data -> model -> fit with Keras callbacks -> evaluation -> run folder.

saved_models/<run>/
  config.yaml       the fully resolved config (written first; a resumed run must match it)
  model_summary.txt Keras model.summary(): layers, output shapes, trainable and frozen parameter counts
  history.csv       one row per committed epoch (CSVLogger; rows of an uncommitted epoch are cut on resume)
  backup/           while training: epoch-NNNN/ (weights + optimizer, state.json) for the newest commit
                    and the one before, best-NNNN.keras (the best epoch so far); removed once complete
  model.keras       the best epoch by validation AUC, copied from backup/ when training ends
  predictions_val.csv, skipped.csv (when any file was unreadable), plots/*.png (validation)
  metrics.json      image- and study-level scores of model.keras on val (with 95% intervals), the
                    threshold (chosen on val for threshold=auto), best_epoch, timings. Everything is
                    selected on val; `python -m fracture evaluate --split test` adds the final test
                    scores and predictions_test.csv afterwards.
  complete.json     written last: the run is complete (find_run and load_run pick only complete runs)
  mlflow_run_id.txt MLflow run id and store URI (cfg.mlflow; see fracture/tracking.py)

Resume contract (details in fracture/resume.py): after `kill -9` at any moment, rerunning the same
command continues after the last committed epoch and ends as if never interrupted: model.keras
the best epoch of the whole run, metrics.json and history.csv agreeing with it. A run killed after
its last epoch redoes only the final stage. A complete run_name is refused ("already complete"),
and so is resuming with another config (the differing keys are named). Every file above is
written atomically (fracture/fileio.py) or, for history.csv, cut back to the commit on resume.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from fracture import (
    determinism, diskspace, distribute, fileio, machine, plots, preflight, progress, runkind, runlock, tracking,
)
from fracture import data as data_lib
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


def fit_verbosity(verbose: str) -> int:
    """Config.verbose -> Keras's: "auto" is the progress bar (1) where someone watches (a terminal or
    a Jupyter kernel) and one line per epoch (2) where output goes to a log file or CI."""
    if verbose != "auto":
        return int(verbose)

    return 1 if progress.watching() else 2


def class_weights(frame: pd.DataFrame) -> dict[int, float]:
    """MURA paper weighting from *study* counts: positives |N|/(|A|+|N|), negatives |A|/(|A|+|N|)."""
    studies = frame.groupby("study")["label"].first()
    abnormal, normal = int(studies.sum()), int((1 - studies).sum())
    total = abnormal + normal
    return {1: normal / total, 0: abnormal / total}


JIT_COMPILE = {"auto": "auto", "true": True, "false": False}  # cfg.jit_compile -> compile(jit_compile=...)


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
        # threshold=auto is chosen after training, on validation: the epoch logs count at 0.5 meanwhile.
        metrics=[keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy(
            name="accuracy", threshold=0.5 if cfg.threshold == "auto" else cfg.threshold)],
        steps_per_execution=cfg.steps_per_execution,
        jit_compile=JIT_COMPILE[cfg.jit_compile],
        # a mixed_float16 model gets a LossScaleOptimizer here (Keras: auto_scale_loss=True, the default)
    )


def stop_at_target(monitor: str, target: float, extra_epochs: int = 0, lr_factor: float = 1.0):
    """A Keras callback for a model that learns from scratch: once `monitor` first reaches
    `target`, the learning rate is multiplied by `lr_factor` and training goes on for
    `extra_epochs` more epochs, then stops (the best epoch is kept by the checkpoint).

    Why not stop at the first crossing: from scratch, that epoch is often a swing of a model still
    learning fast: its localization lags its AUC (a CAM pointing game of 0.35 at the crossing,
    0.73 one epoch later, seen), and at the full rate the next epochs swing back (validation AUC
    0.99 -> 0.81). A lower rate lets the learned features settle. `wait` counts the epochs since
    the crossing (named like EarlyStopping's counter, so the run's commit stores it and a resumed
    run goes on counting; the rate itself is in the optimizer state the commit restores)."""
    import keras

    class StopAtTarget(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.wait = 0  # 0: target not reached yet; then 1 + epochs trained since the crossing

        def on_epoch_end(self, epoch, logs=None):
            if self.wait:
                self.wait += 1
            elif (logs or {}).get(monitor, float("-inf")) >= target:
                self.wait = 1
                if lr_factor != 1.0 and extra_epochs:
                    rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
                    self.model.optimizer.learning_rate = rate * lr_factor
                    log.info("%s reached %.3f (target %.3f) at epoch %d: learning rate %.2g -> %.2g for %d more "
                             "epochs", monitor, logs[monitor], target, epoch + 1, rate, rate * lr_factor, extra_epochs)
            if self.wait and self.wait > extra_epochs:
                log.info("stopping after epoch %d (%s first reached %.3f %d epochs before)", epoch + 1, monitor,
                         target, self.wait - 1)
                self.model.stop_training = True

    return StopAtTarget()


def make_callbacks(cfg, run_dir: Path) -> list:
    """Keras callbacks in the order they must run at an epoch's end: the backup (the commit) last."""
    import keras

    from fracture import resume  # here, not at the top: it loads Keras, which this module does not

    gamma = cfg.gamma
    best = resume.BestModel(run_dir / resume.BACKUP)
    early = plateau = None
    if cfg.early_stopping:
        early = keras.callbacks.EarlyStopping(monitor="val_auc", mode="max", patience=cfg.early_stopping,
                                              restore_best_weights=False)
    # A target rather than a patience: the demo's from-scratch model sits at chance for several
    # epochs before it learns, which a patience would mistake for a plateau.
    target = (stop_at_target("val_auc", cfg.stop_at_val_auc, cfg.epochs_after_target, cfg.lr_after_target)
              if cfg.stop_at_val_auc else None)
    if cfg.plateau_patience:
        plateau = keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.1, patience=cfg.plateau_patience)
    callbacks = [
        best,
        # Multiply the current rate (not the initial one) so a plateau reduction sticks; the rate is
        # part of the optimizer state the backup restores, so a resumed run continues the decay.
        keras.callbacks.LearningRateScheduler(lambda epoch, lr: lr if epoch == 0 else lr * gamma),
        resume.StopOnNonFinite(),  # the loss went NaN/inf: stop, keep the best finite epoch
        *[cb for cb in (early, plateau, target) if cb is not None],
        # After the callbacks above, so the row includes what they added (learning_rate).
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True),
        # Last: its on_epoch_end commits the epoch, after every other file of that epoch is written.
        resume.RunBackup(run_dir, best, stateful=(early, plateau, target)),
    ]
    return callbacks


def train(cfg) -> Path:
    """Train into runs_dir/run_name; an incomplete run of that name resumes (same config only)."""
    frame = preflight.check(cfg)  # before Keras is imported and before any folder exists
    import keras

    dist = distribute.setup(cfg)  # first: a multi-worker strategy must exist before any TensorFlow op
    keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic:
        determinism.enable(cfg.seed)
    run_dir = new_run_dir(cfg)
    cfg = dataclasses.replace(cfg, run_name=run_dir.name)  # the caller's cfg stays as it was
    if not dist.is_chief:  # the chief alone writes (and locks) the run folder
        return _train(cfg, run_dir, frame, dist)
    with runlock.hold(run_dir, "train"):  # a second train of this run_name stops here, touching nothing
        return _train(cfg, run_dir, frame, dist)


def _train(cfg, run_dir: Path, frame: pd.DataFrame, dist) -> Path:
    from fracture import resume  # here, not at the top: it loads Keras, which this module does not
    from fracture.model import build_model, summary_text

    runkind.refuse_other_kind(run_dir, "train")
    if resume.is_complete(run_dir):
        if (run_dir / resume.MARKER).is_file():
            resume.remove_backup(run_dir)  # left by a kill between the marker and this removal
        raise FractureError(f"run {run_dir} is already complete; pick another run_name or delete that folder")
    state = resume.latest_state(run_dir)
    if state is not None:
        resume.check_same_config(run_dir, cfg)
    # Before the folder exists: a weights download that fails (offline) leaves nothing behind.
    with dist.scope():
        model = build_model(cfg)
    if not dist.is_chief:  # writes checkpoints to a temporary folder; the chief writes the run
        try:
            _fit_and_evaluate(cfg, dist.work_dir(run_dir), frame, model, None, dist)
        finally:
            dist.close()
        log.info("worker %d done; the chief writes %s", dist.worker_index, run_dir)
        return run_dir
    # One commit (weights + optimizer state) and one best model must fit before epoch 1 is paid for.
    diskspace.require_free(cfg.runs_dir, resume.checkpoint_bytes(model), "one checkpoint of this model")
    run_dir.mkdir(parents=True, exist_ok=True)
    fileio.remove_partials(run_dir)
    cfg.to_yaml(run_dir / "config.yaml")
    fileio.atomic_write_text(run_dir / "model_summary.txt", summary_text(model))
    log.info("%s run %s", f"resuming (after epoch {state['epoch']})" if state else "starting", run_dir)

    tracker = tracking.start(cfg, run_dir, frame) if cfg.mlflow else None  # None: off or unreachable
    try:
        metrics, best = _fit_and_evaluate(cfg, run_dir, frame, model, tracker, dist)
    except BaseException as exc:  # the MLflow run ends FAILED (KILLED on Ctrl-C); the error goes on
        if tracker is not None:
            tracker.fail(exc)
        raise
    if tracker is not None:
        tracker.finish(metrics, run_dir, best)
    log.info("run folder: %s", run_dir)
    return run_dir


def _fit_and_evaluate(cfg, run_dir: Path, frame: pd.DataFrame, model, tracker, dist=None) -> tuple[dict, object]:
    """Decode, fit (or resume), evaluate: writes every run-folder file but config.yaml; returns (metrics, best model)."""
    arrays = data_lib.split_arrays(frame, cfg)
    skipped = arrays.pop("skipped")
    if len(skipped):
        with fileio.atomic_path(run_dir / "skipped.csv") as tmp:
            skipped.to_csv(tmp, index=False)
    log.info("skipped %d unreadable files%s", len(skipped), f" (see {run_dir / 'skipped.csv'})" if len(skipped) else "")
    for needed in ("train", "val"):
        if needed not in arrays or not len(arrays[needed][1]):
            raise DataError(f"no readable '{needed}' images in {cfg.data_dir}")
    train_frame = arrays["train"][0]
    weights = class_weights(train_frame) if cfg.class_weighting else {0: 1.0, 1: 1.0}
    state = _fit(cfg, run_dir, model, arrays, weights, tracker, dist)
    if dist is not None and not dist.is_chief:
        return {}, None  # the chief alone evaluates and writes the run folder
    return _finish(cfg, run_dir, arrays, skipped, weights, state)


def _fit(cfg, run_dir: Path, model, arrays: dict, weights: dict, tracker, dist=None) -> dict:
    """Train the epochs not yet committed; returns the final committed state (see fracture/resume.py)."""
    from fracture import resume  # here, not at the top: it loads Keras, which this module does not

    dist = dist or distribute.Setup()

    state = resume.latest_state(run_dir)
    if resume.training_done(state, cfg.epochs):
        log.info("training of %s finished before (%d epochs); redoing only the final evaluation", run_dir.name,
                 state["epoch"])
        resume.cut_history(run_dir / "history.csv", state["epoch"])
        return state
    _, x_train, y_train = arrays["train"]
    _, x_val, y_val = arrays["val"]
    sample_weights = np.where(y_train == 1, weights[1], weights[0]).astype(np.float32)
    # Each worker reads its own shard, batch_size / workers images a step (batch_size is global);
    # with a distribution, a short validation batch is padded (weight 0) so it divides over devices.
    batch, spread = dist.worker_batch(cfg.batch_size), dist.kind != "none"
    train_batches = data_lib.make_batches(x_train, y_train, batch, shuffle=True, seed=cfg.seed,
                                          sample_weights=sample_weights, shard=dist.shard)
    val_batches = data_lib.make_batches(x_val, y_val, batch, shuffle=False, shard=dist.val_shard, pad=spread)

    with dist.scope():
        compile_model(model, cfg)
        callbacks = make_callbacks(cfg, run_dir)
        backup = callbacks[-1]
        if tracker is not None:
            callbacks.append(tracker.callback())
        dist.prepare(model, train_batches)
        model.fit(dist.dataset(train_batches, cfg.batch_size), validation_data=dist.dataset(val_batches, cfg.batch_size),
                  epochs=cfg.epochs, callbacks=callbacks, verbose=fit_verbosity(cfg.verbose))
    return backup.state


def _finish(cfg, run_dir: Path, arrays: dict, skipped, weights: dict, state: dict) -> tuple[dict, object]:
    """The best epoch's model, predictions, plots, metrics.json, then the marker that says "complete"."""
    from fracture import resume  # here, not at the top: it loads Keras, which this module does not
    # here, not at the top: it loads sklearn, which this module does not
    from fracture.evaluation import choose_threshold, format_table, predict_images, score_frame
    from fracture.model import count_params  # here, not at the top: it loads Keras, which this module does not
    from fracture.runs import load_model  # here, not at the top: it loads Keras, which this module does not

    if not state["best_model"]:
        if state.get("nonfinite_epoch"):
            raise FractureError(resume.nonfinite_message(run_dir, cfg, state) + " No earlier epoch was finite, so "
                                f"there is no model to keep: start again with a lower learning_rate and a new "
                                f"run_name (or delete {run_dir})")
        raise FractureError(f"no epoch of {run_dir.name} produced a val_auc to pick the best model by")
    if state.get("nonfinite_epoch"):
        log.warning("%s The run is completed from its best finite epoch, %d.", resume.nonfinite_message(
            run_dir, cfg, state), state["best_epoch"])
    fileio.atomic_copy(run_dir / resume.BACKUP / state["best_model"], run_dir / "model.keras")
    history = pd.read_csv(run_dir / "history.csv")
    best = load_model(run_dir / "model.keras")
    trainable, frozen = count_params(best)
    n_train = len(arrays["train"][1])
    metrics = {
        "run": run_dir.name,
        "best_epoch": int(state["best_epoch"]),
        "epochs_run": int(state["epoch"]),
        "train_seconds": round(state["train_seconds"], 1),  # epoch times summed over restarts
        "train_images_per_second": round(n_train * state["epoch"] / max(state["train_seconds"], 1e-9), 2),
        "trainable_params": trainable,
        "frozen_params": frozen,
        "class_weights": {str(k): v for k, v in weights.items()},
        "counts": {split: int(len(a[1])) for split, a in arrays.items()},
        "skipped_files": int(len(skipped)),
        "machine": machine.describe(),  # CPU, cores, backend, versions, commit: what made these numbers
    }
    if state.get("nonfinite_epoch"):
        metrics["nonfinite_epoch"] = int(state["nonfinite_epoch"])  # training stopped there (NaN/inf loss)
    # Selection uses validation only: the best epoch (above), the threshold and these scores. The
    # test split is the final report, evaluated once afterwards by `python -m fracture evaluate`.
    val_frame, val_images, _ = arrays["val"]
    val_frame = val_frame.assign(probability=predict_images(best, val_images, cfg.batch_size))
    if cfg.threshold == "auto":
        threshold, metrics["threshold_rule"] = choose_threshold(val_frame, cfg)
    else:
        threshold, metrics["threshold_rule"] = float(cfg.threshold), "fixed by the config"
    metrics["threshold"] = threshold
    metrics["val"] = score_frame(val_frame, threshold, cfg.bootstrap_resamples, cfg.seed)
    with fileio.atomic_path(run_dir / "predictions_val.csv") as tmp:
        val_frame.to_csv(tmp, index=False)
    log.info("val (selection):\n%s", format_table(metrics["val"]))
    if "test" in arrays:
        log.info("test split held out: report it once with `python -m fracture evaluate --run %s --split test`",
                 run_dir)
    plots.save_plots(history, val_frame, metrics["val"], run_dir / "plots", threshold, "val",
               best_epoch=metrics["best_epoch"])
    fileio.atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2))
    resume.write_marker(run_dir, metrics)  # the run is complete from here on
    resume.remove_backup(run_dir)
    return metrics, best
