"""MLflow experiment tracking: every training run recorded, comparable and browsable with `mlflow ui`.

    tracker = start(cfg, run_dir, frame)    # None when MLflow cannot be reached (one warning)
    callbacks.append(tracker.callback())    # per-epoch loss, AUC, accuracy, learning rate
    tracker.finish(metrics, run_dir, best)  # final metrics, counts, artifacts, the LoggedModel; FINISHED
    tracker.fail(exc)                        # or: the run ends FAILED (KILLED on Ctrl-C)

Store: `MLFLOW_TRACKING_URI` when set (a remote `mlflow server`, another database...), else the
SQLite file `./mlflow.db` with artifacts in `./mlruns/`: exactly what `mlflow ui` started in the
same folder (the repo root) reads with no arguments in MLflow 3.

Tracking never breaks training: any MLflow error logs one warning, switches tracking off for the
rest of the run, and the run folder is written in full as without MLflow. HTTP retries and
timeouts are bounded while we talk to a server (a user's own MLFLOW_HTTP_REQUEST_* values win),
so an unreachable server costs seconds, not minutes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import warnings
from pathlib import Path

from fracture import machine
import fracture
from fracture.errors import FractureError
from fracture.fileio import atomic_write_text

log = logging.getLogger(__name__)

RUN_ID_FILE = "mlflow_run_id.txt"  # line 1: run id, line 2: tracking URI, line 3: the run folder it was written in
LOCAL_DB = "mlflow.db"  # the default store, relative to the working directory
RUN_FILES = ["config.yaml", "model_summary.txt", "history.csv", "metrics.json", "predictions_val.csv",
             "predictions_test.csv", "skipped.csv"]
FINAL_KEYS = ("auc", "kappa", "accuracy", "sensitivity", "specificity")
SUMMARY_KEYS = ("best_epoch", "train_seconds", "train_images_per_second")  # measured: metrics
COUNT_KEYS = ("epochs_run", "trainable_params", "frozen_params", "skipped_files")  # facts of the run: tags
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # MLflow 3 UI: model-training view instead of GenAI
PROBE = dict(retries=0, timeout=10)  # first contact and last-gasp calls: fail fast
STEADY = dict(retries=2, timeout=60)  # later calls: ride out a blip, not an outage


# --------------------------------------------------------------------------------------------
# where the store is
# --------------------------------------------------------------------------------------------
def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI (or mlflow.set_tracking_uri) when set, else ./mlflow.db as an absolute URI."""
    import mlflow

    if mlflow.is_tracking_uri_set():
        return mlflow.get_tracking_uri()
    return f"sqlite:///{Path.cwd() / LOCAL_DB}"


def _artifact_location(uri: str, cfg) -> str | None:
    """For a local SQLite store: artifacts in `mlruns/` beside the database file. (MLflow's own
    default is ./mlruns of whatever folder the process runs in, which scatters them.)"""
    if not uri.startswith("sqlite:///"):
        return None  # a server or file store decides itself
    name = re.sub(r"[^\w.-]+", "_", cfg.mlflow_experiment)
    database = Path(uri[len("sqlite:///"):].split("?")[0]).resolve()
    return (database.parent / "mlruns" / name).as_uri()


def _missing_local_store(uri: str) -> bool:
    return uri == f"sqlite:///{Path.cwd() / LOCAL_DB}" and not (Path.cwd() / LOCAL_DB).is_file()


@contextlib.contextmanager
def _http_limits(retries: int, timeout: int):
    """Bound MLflow's HTTP retries and timeout inside the block; values the user set are kept.

    MLflow reads these only from the environment, so this edits os.environ, which is process-wide
    and not thread-safe: another thread talking to MLflow inside the block gets the same bounds,
    and two overlapping blocks can leave one value set. The package calls it from the command's
    main thread only; an application that talks to MLflow from other threads at the same time
    should set the two variables itself, which this then leaves alone."""
    added = []
    for key, value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", retries), ("MLFLOW_HTTP_REQUEST_TIMEOUT", timeout)):
        if key not in os.environ:
            os.environ[key] = str(value)
            added.append(key)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


# --------------------------------------------------------------------------------------------
# what identifies a run: data, code, environment
# --------------------------------------------------------------------------------------------
def dataset_fingerprint(frame) -> str:
    """sha1 of the sorted (path relative to the data root, label) list: same files and labels, same print."""
    paths = [str(p) for p in frame["path"]]
    root = os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0]) if paths else ""
    lines = sorted(f"{os.path.relpath(p, root)}\t{int(label)}" for p, label in zip(paths, frame["label"]))
    return hashlib.sha1("\n".join(lines).encode()).hexdigest()[:16]


def dataset_input(cfg, frame, context: str = "training"):
    """The image index as an `mlflow.data` dataset input (the run's Datasets panel): one row per image
    with its split, named after the data folder and study type, its digest the dataset fingerprint."""
    import mlflow.data
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    name = Path(cfg.data_dir).resolve().name + (f":{cfg.study_type}" if cfg.data_format == "mura" else "")
    with warnings.catch_warnings():
        # Two UserWarnings that are no user's business: MLflow registers its local-path source twice
        # ("can be interpreted in multiple ways"), and its integer-column hint is about model inputs.
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(frame, source=str(Path(cfg.data_dir).resolve()), name=name,
                                          targets="label", digest=dataset_fingerprint(frame))._to_mlflow_entity()
    return DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])


def run_tags(cfg, run_dir: Path, frame=None) -> dict[str, str]:
    import keras

    record = machine.describe()
    commit, dirty = record["git_commit"], record["git_dirty"]
    run_dir = Path(run_dir).resolve()
    tags = {
        "backbone": cfg.backbone,
        "study_type": cfg.study_type,
        "git_commit": commit,
        "git_dirty": str(dirty).lower() if dirty is not None else "unknown",
        "keras_backend": keras.backend.backend(),
        "keras_version": keras.__version__,
        "fracture_version": fracture.__version__,
        "run_dir": str(run_dir),
        # Shown by the MLflow UI: source commit and the run's description.
        "mlflow.source.name": "fracture train",
        "mlflow.note.content": f"Run folder: `{run_dir}`",
    }
    tags.update(machine.as_tags(record))  # the CPU, cores and versions the run was made with
    if commit != "unknown":
        tags["mlflow.source.git.commit"] = commit
    if frame is not None and len(frame):  # without the index, keep whatever print the run has
        tags["dataset_fingerprint"] = dataset_fingerprint(frame)
    return tags


def read_run_id(run_dir) -> tuple[str, str] | None:
    """(run id, tracking URI) recorded in a run folder, or None when the run was not tracked."""
    path = Path(run_dir) / RUN_ID_FILE
    if not path.is_file():
        return None
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return (lines[0], lines[1] if len(lines) > 1 else tracking_uri()) if lines else None


def recorded_folder(run_dir) -> str | None:
    """The run folder mlflow_run_id.txt was written in (line 3), or None for older files."""
    path = Path(run_dir) / RUN_ID_FILE
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    return lines[2] if len(lines) > 2 else None


def moved_from(run_dir) -> str | None:
    """The folder this run was recorded in, when that is not `run_dir` (the folder was copied or moved)."""
    recorded = recorded_folder(run_dir)
    return recorded if recorded and recorded != str(Path(run_dir).resolve()) else None


def write_run_id(run_dir, run_id: str, uri: str) -> None:
    atomic_write_text(Path(run_dir) / RUN_ID_FILE, f"{run_id}\n{uri}\n{Path(run_dir).resolve()}\n")


# --------------------------------------------------------------------------------------------
# the tracker
# --------------------------------------------------------------------------------------------
class MlflowTracker:
    """One MLflow run mirroring one run folder. Every method is a no-op once tracking stopped."""

    def __init__(self, client, run_id: str, uri: str):
        self.client, self.run_id, self.uri = client, run_id, uri
        self.active = True

    def _call(self, what: str, fn, *args, limits=STEADY) -> bool:
        if not self.active:
            return False
        try:
            with _http_limits(**limits):
                fn(*args)
            return True
        except Exception as exc:  # MLflow raises many types (MlflowException, requests, sqlalchemy)
            self.active = False
            log.warning("MLflow tracking stopped for this run (%s failed: %s: %s); training goes on and the "
                        "run folder is complete without it", what, type(exc).__name__, exc)
            with contextlib.suppress(Exception), _http_limits(**PROBE):
                self.client.set_terminated(self.run_id, "FAILED")
            return False

    # --- during training --------------------------------------------------------------------
    def log_epoch(self, epoch: int, logs: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, int(epoch)) for key, value in logs.items()
                   if isinstance(value, (int, float)) or getattr(value, "ndim", None) == 0]
        self._call(f"logging epoch {epoch + 1}", lambda: self.client.log_batch(self.run_id, metrics=metrics))

    def callback(self):
        """A Keras callback logging each epoch's logs (loss, auc, accuracy, val_*, learning_rate) at step=epoch."""
        import keras

        tracker = self

        class MlflowEpochLogger(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.started = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                logs = dict(logs or {})
                if "learning_rate" not in logs and hasattr(self.model.optimizer, "learning_rate"):
                    logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
                logs["epoch_seconds"] = time.perf_counter() - getattr(self, "started", time.perf_counter())
                tracker.log_epoch(epoch, logs)

        return MlflowEpochLogger()

    # --- at the end -------------------------------------------------------------------------
    def finish(self, metrics: dict, run_dir, model=None) -> bool:
        """Final metrics (`test_study_auc`...), run-folder files, plots and the model; the run ends FINISHED."""
        run_dir = Path(run_dir)
        ok = self._call("logging final metrics", self._log_final_metrics, metrics)
        ok = ok and self._call("logging counts", self._log_counts, metrics)
        ok = ok and self._call("logging artifacts", self._log_run_files, run_dir)
        if model is not None:
            ok = ok and self._call("logging the model", self._log_model, model, run_dir)
        ok = ok and self._call("ending the run", lambda: self.client.set_terminated(self.run_id, "FINISHED"))
        if ok:
            log.info("MLflow run %s in %s", self.run_id, self.uri)
        return ok

    def fail(self, exc: BaseException | None = None) -> None:
        """End the run FAILED (KILLED for Ctrl-C), noting the error, when training raised."""
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        note = f"{type(exc).__name__}: {exc}"[:5000] if exc is not None else status

        def end():
            self.client.set_tag(self.run_id, "error", note)
            self.client.set_terminated(self.run_id, status)

        self._call("ending the failed run", end, limits=PROBE)

    # --- a cross-validation parent run (fracture/cv.py) ---------------------------------------
    def adopt(self, child_run_dir) -> bool:
        """Make the MLflow run of `child_run_dir` (a fold) a child of this one: the UI nests it here."""
        recorded = read_run_id(child_run_dir)
        if recorded is None or recorded[1] != self.uri:
            return False
        return self._call(f"nesting {Path(child_run_dir).name}",
                          lambda: self.client.set_tag(recorded[0], "mlflow.parentRunId", self.run_id))

    def finish_parent(self, values: dict, files) -> bool:
        """The parent's aggregate scores (metrics at step 0) and summary files; the run ends FINISHED."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, 0) for k, v in values.items()]
        ok = self._call("logging cross-validation scores", lambda: self.client.log_batch(self.run_id, metrics=metrics))
        for path in files:
            ok = ok and self._call(f"logging {Path(path).name}", self.client.log_artifact, self.run_id, str(path))
        return ok and self._call("ending the run", lambda: self.client.set_terminated(self.run_id, "FINISHED"))

    def _log_final_metrics(self, metrics: dict) -> None:
        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), 0  # one value per run: MLflow's convention is step 0
        values = {key: metrics[key] for key in SUMMARY_KEYS if key in metrics}
        values.update(split_metric_values(metrics, ("val", "test")))
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])

    def _log_counts(self, metrics: dict) -> None:
        """Counts are facts about the run, not measurements to chart: tags (params are write-once,
        and a resumed run that redoes its final stage logs them again)."""
        from mlflow.entities import RunTag

        values = {key: metrics[key] for key in COUNT_KEYS if key in metrics}
        values.update({f"{split}_images": n for split, n in metrics.get("counts", {}).items()})
        values.update({f"class_weight_{label}": w for label, w in metrics.get("class_weights", {}).items()})
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in values.items()])

    def _log_run_files(self, run_dir: Path) -> None:
        for name in RUN_FILES:
            if (run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(run_dir / name))
        if (run_dir / "plots").is_dir():
            self.client.log_artifacts(self.run_id, str(run_dir / "plots"), "plots")

    def _log_model(self, model, run_dir: Path) -> None:
        """The best model as an MLflow 3 LoggedModel named "model", in MLflow's Keras flavor: listed in
        the Models tab, linked to this run and its final scores, registrable, loadable as
        `models:/<model id>` or `runs:/<run id>/model` with mlflow.pyfunc in any process that has Keras
        (the model holds only built-in layers), servable with `mlflow models serve`.

        These are the steps of `mlflow.keras.log_model`, taken through our client: it carries the
        store's URI, where the fluent call would need MLflow's process-wide URI set (global state).
        Should the flavor fail on some backend or MLflow version, the LoggedModel holds the plain
        model.keras and its signature instead."""
        from mlflow.entities import LoggedModelOutput, LoggedModelStatus

        run = self.client.get_run(self.run_id)
        logged = self.client.create_logged_model(run.info.experiment_id, name=MODEL_NAME, source_run_id=self.run_id,
                                                 params=dict(run.data.params), model_type="keras-classifier")
        try:
            self.client.log_outputs(self.run_id, [LoggedModelOutput(logged.model_id, step=0)])
            with tempfile.TemporaryDirectory() as tmp:
                local = Path(tmp) / "model"
                _save_flavor(model, local, logged, self.run_id, run_dir)
                self.client.log_model_artifacts(logged.model_id, str(local))
            self._link_final_metrics(run, logged.model_id)
        except BaseException:
            with contextlib.suppress(Exception):
                self.client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
            raise
        self.client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
        log.info("MLflow LoggedModel %s (models:/%s)", logged.model_id, logged.model_id)

    def _link_final_metrics(self, run, model_id: str) -> None:
        """The run's final scores again, tagged with the model: the Models tab shows them per model."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        linked = [Metric(key, value, now, 0, model_id=model_id) for key, value in run.data.metrics.items()
                  if FINAL_METRIC.match(key)]
        if linked:
            self.client.log_batch(self.run_id, metrics=linked)


MODEL_NAME = "model"  # the LoggedModel's name: `runs:/<run id>/model` resolves to it
FINAL_METRIC = re.compile(r"(val|test)_(image|study)_")  # the scores _log_final_metrics writes


def _save_flavor(model, local: Path, logged, run_id: str, run_dir: Path) -> None:
    """The MLflow model folder of `logged` at `local`: Keras flavor, signature, input example, pins."""
    import numpy as np

    signature = model_signature(model)
    try:
        import mlflow.keras
        from mlflow.models import Model

        description = Model(artifact_path=logged.artifact_location, model_uuid=logged.model_id, run_id=run_id,
                            model_id=logged.model_id)
        # The signature goes on the description, not through `signature=`: save_model requires an
        # input schema in its argument (it reads signature.inputs.inputs) but keeps a signature
        # the description already holds, and only an output-only signature lets uint8 in.
        description.signature = signature
        size = tuple(int(d) for d in model.inputs[0].shape[1:])
        # A uniform mid-gray image shows the input format (uint8, as PNG pixels come); no patient's
        # pixels in an artifact that may be registered and shared.
        example = np.full((1, *size), 128, np.uint8)
        local.mkdir()  # mlflow.keras.save_model writes the input example before it creates the folder
        with _quiet("mlflow.keras.save"):  # "without specifying model signature": it is on `description`
            mlflow.keras.save_model(model, str(local), mlflow_model=description, signature=None,
                                    input_example=example, pip_requirements=requirements(),
                                    metadata=input_metadata(model))
    except Exception as exc:
        log.warning("MLflow Keras flavor failed (%s); logging model.keras with its signature instead", exc)
        shutil.rmtree(local, ignore_errors=True)
        local.mkdir()
        shutil.copy2(run_dir / "model.keras", local / "model.keras")
        (local / "signature.json").write_text(json.dumps(signature.to_dict(), indent=2))


def split_metric_values(metrics: dict, splits) -> dict[str, float]:
    """metrics.json -> flat MLflow metrics: `val_study_auc`, its interval as `val_study_auc_ci_low` and
    `val_study_auc_ci_high` (when computed), and `threshold` (the one chosen on validation)."""
    values = {"threshold": metrics["threshold"]} if isinstance(metrics.get("threshold"), (int, float)) else {}
    for split in splits:
        for level in ("image", "study"):
            scores = metrics.get(split, {}).get(level, {})
            for key in FINAL_KEYS:
                if key in scores:
                    values[f"{split}_{level}_{key}"] = scores[key]
                if scores.get(f"{key}_ci"):
                    values[f"{split}_{level}_{key}_ci_low"], values[f"{split}_{level}_{key}_ci_high"] = \
                        scores[f"{key}_ci"]
    return values


def log_evaluation(run_dir, metrics: dict, split: str, paths, mlflow_run: str | None = None) -> bool:
    """After `evaluate`: the split's metrics (and files) into the run's MLflow run, if it has one."""
    def log_metrics(client, run_id):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        values = split_metric_values(metrics, [split])
        outputs = client.get_run(run_id).outputs
        models = [o.model_id for o in (outputs.model_outputs if outputs else [])]
        # plain run metrics, and the same again linked to the run's LoggedModel (its Models tab row)
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0, model_id=m)
                                          for m in [None, *models] for k, v in values.items()])

    return (_on_recorded_run(run_dir, f"the {split} metrics", log_metrics, mlflow_run)
            and log_artifacts(run_dir, [p for p in map(Path, paths) if p.is_file()], mlflow_run=mlflow_run))


def model_signature(model):
    """-> probability (N, 1) float32; the input is described in `input_metadata`, not in the schema.

    MLflow enforces a tensor input's dtype exactly (no cast), so any one declared dtype refuses the
    other: float32 refused the uint8 pixels a user reads from a PNG, uint8 would refuse floats.
    Without an input schema pyfunc passes the array to Keras, whose model casts it to float32 (exact
    for uint8), and `mlflow models serve` hands JSON numbers over as they come: both dtypes work."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(inputs=None, outputs=Schema([TensorSpec(np.dtype("float32"), (-1, 1))]))


@contextlib.contextmanager
def _quiet(logger_name: str):
    """Drop one library logger's WARNING records inside the block (a warning that does not apply)."""
    target = logging.getLogger(logger_name)

    def drop(record):
        return record.levelno != logging.WARNING

    target.addFilter(drop)
    try:
        yield
    finally:
        target.removeFilter(drop)


def input_metadata(model) -> dict:
    """The input contract, in the MLmodel file's metadata (shown by `mlflow models` and the UI)."""
    shape = [-1 if d is None else int(d) for d in model.inputs[0].shape]
    return {"input": f"raw grayscale pixels 0-255 {tuple(shape)}, uint8 or float (float32 inside the model)",
            "input_shape": shape, "input_dtypes": ["uint8", "float32"],
            "output": "fracture probability (N, 1)"}


def requirements() -> list[str]:
    """Pinned Keras, backend and MLflow: given explicitly, so MLflow skips its slow inference subprocess."""
    from importlib import metadata

    import keras

    backends = {"tensorflow": ["tensorflow-cpu", "tensorflow"], "jax": ["jax"], "torch": ["torch"]}
    pins = []
    for group in (["keras"], backends.get(keras.backend.backend(), []), ["mlflow"]):
        for name in group:  # the first installed name of each group
            with contextlib.suppress(metadata.PackageNotFoundError):
                pins.append(f"{name}=={metadata.version(name)}")
                break
    return pins


# --------------------------------------------------------------------------------------------
# starting a run (or reopening the one a resumed run folder recorded)
# --------------------------------------------------------------------------------------------
def start(cfg, run_dir, frame=None) -> MlflowTracker | None:
    """Start (or, for a resumed run folder, reopen) the MLflow run for `run_dir`; None if MLflow fails."""
    run_dir = Path(run_dir)
    uri = tracking_uri()
    run_id = None
    try:
        from mlflow import MlflowClient
        from mlflow.entities import Param, RunTag

        client = MlflowClient(tracking_uri=uri)
        with _http_limits(**PROBE):
            experiment_id = _experiment_id(client, cfg, uri)
        with _http_limits(**STEADY):
            run_id, logged = _reopen(client, run_dir, uri)
            if run_id is None:
                run_id = client.create_run(experiment_id, run_name=run_dir.name).info.run_id
            params = [Param(k, str(v)) for k, v in cfg.to_dict().items() if k not in logged]
            tags = [RunTag(k, v) for k, v in run_tags(cfg, run_dir, frame).items()]
            client.log_batch(run_id, params=params, tags=tags)
            if frame is not None and len(frame):
                client.log_inputs(run_id, datasets=[dataset_input(cfg, frame)])
        write_run_id(run_dir, run_id, uri)
    except Exception as exc:  # unreachable server, bad URI, locked database...
        log.warning("MLflow tracking is off for this run: cannot use the store %s (%s: %s); training goes on "
                    "and the run folder is complete without it", uri, type(exc).__name__, exc)
        if run_id is not None:
            with contextlib.suppress(Exception), _http_limits(**PROBE):
                client.set_terminated(run_id, "FAILED")
        return None
    log.info("MLflow run %s (experiment '%s') in %s", run_id, cfg.mlflow_experiment, uri)
    return MlflowTracker(client, run_id, uri)


def _experiment_id(client, cfg, uri: str) -> str:
    """The experiment's id, creating it if needed, marked as model training (not GenAI) for the UI."""
    experiment = client.get_experiment_by_name(cfg.mlflow_experiment)
    if experiment is None:
        return client.create_experiment(cfg.mlflow_experiment, _artifact_location(uri, cfg),
                                        tags={EXPERIMENT_KIND_TAG: "custom_model_development"})
    if EXPERIMENT_KIND_TAG not in experiment.tags:  # a kind someone chose in the UI stays
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, "custom_model_development")
    return experiment.experiment_id


def _reopen(client, run_dir: Path, uri: str) -> tuple[str | None, set]:
    """A resumed run folder continues its MLflow run: (run id, params already logged), else (None, {})."""
    recorded = read_run_id(run_dir)
    if recorded is None or recorded[1] != uri:
        return None, set()
    if moved_from(run_dir):  # a copy must not continue (and overwrite) the original's MLflow run
        log.warning("%s was recorded in %s: this copy gets its own MLflow run", run_dir, moved_from(run_dir))
        return None, set()
    try:
        run = client.get_run(recorded[0])
    except Exception:  # deleted from the store: start a new run
        return None, set()
    client.update_run(run.info.run_id, status="RUNNING")
    return run.info.run_id, set(run.data.params)


# --------------------------------------------------------------------------------------------
# adding files later (CAM panels), from any process
# --------------------------------------------------------------------------------------------
def log_artifacts(run_dir, paths, artifact_path: str | None = None, mlflow_run: str | None = None) -> bool:
    """Add files or folders to the MLflow run that `run_dir` recorded (no-op for untracked runs).

    For work done after training, e.g. CAM panels: reopens the run by the id in mlflow_run_id.txt.
    Returns whether everything was logged; MLflow errors become one warning.
    """
    def add(client, run_id):
        for path in map(Path, paths):
            if path.is_dir():
                client.log_artifacts(run_id, str(path), "/".join(filter(None, [artifact_path, path.name])))
            else:
                client.log_artifact(run_id, str(path), artifact_path)

    return _on_recorded_run(run_dir, artifact_path or "files", add, mlflow_run)


def _on_recorded_run(run_dir, what: str, action, mlflow_run: str | None = None) -> bool:
    """action(client, run_id) on the MLflow run that `run_dir` recorded: False for an untracked run,
    and False with one warning (never an exception) when MLflow fails.

    A run folder that was copied or moved (recorded in another folder) would write into the
    original's MLflow run: only with mlflow_run ("recorded", or another run id) does it."""
    recorded = read_run_id(run_dir)
    if recorded is None:
        return False
    run_id, uri = recorded
    if mlflow_run is None and moved_from(run_dir):
        log.warning("%s was recorded in MLflow as %s (run %s): this folder is a copy or was moved, so %s stays out "
                    "of MLflow. Pass --mlflow-run to log it to that run anyway (or --mlflow-run RUN_ID)", run_dir,
                    moved_from(run_dir), run_id, what)
        return False
    if mlflow_run not in (None, "recorded"):
        run_id = mlflow_run
    try:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        with _http_limits(**STEADY):
            action(client, run_id)
    except Exception as exc:
        log.warning("could not add %s to MLflow run %s in %s (%s: %s)", what, run_id, uri, type(exc).__name__, exc)
        return False
    return True


# --------------------------------------------------------------------------------------------
# `python -m fracture runs`
# --------------------------------------------------------------------------------------------
TABLE_PARAMS = ["backbone", "image_size", "trainable_layers", "learning_rate", "gamma"]
# Selection columns first (validation), then the final held-out test scores where `evaluate --split test` ran.
TABLE_METRICS = ["val_study_auc", "val_study_auc_ci_low", "val_study_auc_ci_high", "val_study_kappa",
                 "test_study_auc", "test_study_kappa", "test_image_auc"]
DEFAULT_SORT = "val_study_auc"  # runs are compared on validation; test is reported, never chosen by


def best_runs(sort: str = DEFAULT_SORT, limit: int = 10, experiment: str = "fracture"):
    """A DataFrame of the `limit` finished runs with the highest `sort` metric in `experiment`."""
    import pandas as pd
    from mlflow import MlflowClient

    uri = tracking_uri()
    if _missing_local_store(uri):
        raise FractureError(f"no MLflow store here ({Path.cwd() / LOCAL_DB} does not exist): train a run with "
                            "mlflow=true first, run this from the repo root, or set MLFLOW_TRACKING_URI")
    client = MlflowClient(tracking_uri=uri)
    try:
        with _http_limits(**PROBE):
            found = client.get_experiment_by_name(experiment)
            runs = [] if found is None else client.search_runs(
                [found.experiment_id], order_by=[f"metrics.`{sort}` DESC"], max_results=max(limit, 1) * 5)
    except Exception as exc:
        raise FractureError(f"cannot read the MLflow store {uri}: {type(exc).__name__}: {exc}") from exc
    if found is None:
        raise FractureError(f"no MLflow experiment '{experiment}' in {uri}; train with mlflow=true "
                            "(mlflow_experiment=NAME picks the experiment)")
    if not any(sort in r.data.metrics for r in runs):
        known = sorted({k for r in runs for k in r.data.metrics})
        raise FractureError(f"no run in experiment '{experiment}' has the metric '{sort}'; "
                            f"known metrics: {', '.join(known) or 'none yet'}")
    rows = []
    for r in runs:
        if sort not in r.data.metrics:
            continue
        row = {"run": r.info.run_name, "run_id": r.info.run_id[:8]}
        row.update({p: r.data.params.get(p, "") for p in TABLE_PARAMS})
        row.update({m: r.data.metrics.get(m) for m in dict.fromkeys([sort, *TABLE_METRICS])})
        rows.append(row)
    table = pd.DataFrame(rows).sort_values(sort, ascending=False, kind="stable", na_position="last")
    return table.head(limit).reset_index(drop=True)


def cli_runs(args) -> None:
    import pandas as pd

    table = best_runs(args.sort, args.limit, args.experiment)
    print(f"best {len(table)} runs by {args.sort} (experiment '{args.experiment}', store {tracking_uri()}):")
    with pd.option_context("display.max_columns", None, "display.width", 250, "display.max_colwidth", 40):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-"))
