"""The run folder's resume contract: what is committed, what a rerun continues from, when a run is complete.

Each epoch ends with every callback's writes (best model, history row), then one commit: the
epoch's backup folder `backup/epoch-NNNN.partial/` (weights with optimizer state + state.json)
is renamed to `backup/epoch-NNNN/`. A rename is atomic, so after `kill -9` at any moment the
newest `epoch-NNNN/` is a whole epoch, and whatever came after it (a half-written backup or best
model, a history row) is debris that the rerun removes or cuts before it redoes that epoch.

state.json (the commit's content) carries what Keras callbacks forget across a restart:
    epoch         epochs done (Keras's BackupAndRestore reads this key for the initial epoch)
    best_value    ModelCheckpoint's best val_auc, so a resumed run does not overwrite a better model
    best_epoch    the epoch that scored it; best_model is its file, backup/best-NNNN.keras
    stopped       EarlyStopping / TerminateOnNaN ended training at this epoch
    train_seconds summed epoch times across restarts
    callbacks     EarlyStopping / ReduceLROnPlateau counters (wait, best, cooldown)

The newest commit and the one before are kept; a commit whose weights cannot be read is renamed
`*.broken` and the one before is used, with a warning. A run is complete when `complete.json`
exists (written after metrics.json and plots).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import keras
import numpy as np

from fracture import config as config_lib
from fracture import diskspace, fileio, runkind
from fracture.errors import ConfigError, FractureError

log = logging.getLogger(__name__)

BACKUP = "backup"
STATE = "state.json"
WEIGHTS = "latest.weights.h5"  # Keras insists on the .weights.h5 ending
MARKER = "complete.json"
KEEP = 2  # committed epochs kept: the newest and one to fall back to
# Keys that say where files go or whether MLflow watches, not what is trained: a resumed run may change them.
RESUME_FREE_KEYS = ("mlflow", "mlflow_experiment", "cache_dir", "runs_dir", "verbose")
# May grow on resume: more epochs continue the same training (the learning-rate schedule counts
# epochs from the start, not towards the end), so an unfinished run can be given a higher cap.
RESUME_GROWING_KEYS = ("epochs",)
CALLBACK_STATE = ("wait", "best", "best_epoch", "cooldown_counter")

# BestModel and RunBackup extend Keras's ModelCheckpoint and BackupAndRestore through members Keras
# keeps private, which may change in any release. They are the same in Keras 3.11 to 3.15 (a `best`
# of None, as a fresh run restores, needs MonitorCallback._is_improvement: 3.11); `export
# --format litert` needs 3.13. pyproject.toml pins this range; constraints.txt the tested version.
KERAS_SUPPORTED = ">=3.13,<3.16"
KERAS_PRIVATE = {"ModelCheckpoint": ("_save_model", "_get_file_path", "_is_improvement"),
                 "BackupAndRestore": ("_load_model",)}
KERAS_PRIVATE_ATTRIBUTES = ("_weights_path", "_training_metadata_path")  # set by BackupAndRestore.__init__


def _keras_mismatch(missing: list[str]) -> FractureError:
    return FractureError(
        f"Keras {keras.__version__} lacks {', '.join(missing)}, which fracture's resumable training "
        f"(fracture/resume.py) builds on: install a supported Keras (pip install 'keras{KERAS_SUPPORTED}')")


def require_keras_callbacks() -> None:
    """FractureError unless Keras's callback classes have the private methods this module overrides."""
    missing = [f"keras.callbacks.{cls}.{name}" for cls, names in KERAS_PRIVATE.items() for name in names
               if not callable(getattr(getattr(keras.callbacks, cls), name, None))]
    if missing:
        raise _keras_mismatch(missing)


# --------------------------------------------------------------------------------------------
# run status
# --------------------------------------------------------------------------------------------
def is_complete(run_dir) -> bool:
    run_dir = Path(run_dir)
    return (run_dir / MARKER).is_file()


def is_incomplete(run_dir) -> bool:
    """A run folder that training started (config or backup written) and did not finish."""
    run_dir = Path(run_dir)
    started = (run_dir / "config.yaml").is_file() or (run_dir / BACKUP).is_dir()
    return started and not is_complete(run_dir)


def resume_hint(run_dir) -> str:
    command = runkind.resume_command(run_dir)
    if command:  # a cv or ensemble folder: training into it would put an unrelated model there
        return f"rerun the command that started it to finish it: `{command}`"
    return (f"rerun the command that started it to resume, e.g. `python -m fracture train --config "
            f"{Path(run_dir) / 'config.yaml'}`")


def write_marker(run_dir, metrics: dict) -> None:
    keys = ("run", "best_epoch", "epochs_run")
    info = {"completed": time.strftime("%Y-%m-%dT%H:%M:%S"), **{k: metrics[k] for k in keys if k in metrics}}
    fileio.atomic_write_text(Path(run_dir) / MARKER, json.dumps(info, indent=2))


def remove_backup(run_dir) -> None:
    shutil.rmtree(Path(run_dir) / BACKUP, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# committed state
# --------------------------------------------------------------------------------------------
def commits(run_dir) -> list[Path]:
    """Committed epoch folders, newest first."""
    backup = Path(run_dir) / BACKUP
    found = [p for p in backup.glob("epoch-[0-9][0-9][0-9][0-9]") if p.is_dir()] if backup.is_dir() else []
    return sorted(found, reverse=True)


def read_state(folder) -> dict:
    return json.loads((Path(folder) / STATE).read_text())


def latest_state(run_dir) -> dict | None:
    """The newest committed state that parses (its weights are not read here), or None."""
    for folder in commits(run_dir):
        try:
            return read_state(folder)
        except (OSError, ValueError):
            continue
    return None


def training_done(state: dict | None, epochs: int) -> bool:
    return state is not None and (state["epoch"] >= epochs or state["stopped"])


def fresh_state() -> dict:
    return {"epoch": 0, "best_value": None, "best_epoch": None, "best_model": None, "stopped": False,
            "train_seconds": 0.0, "callbacks": {}}


def cut_history(path, epochs: int) -> int:
    """Keep the header and the rows of the first `epochs` epochs of a CSVLogger file; later rows
    come from an epoch that was not committed and will be redone. Rewritten in place (not replaced),
    so a CSVLogger that already opened the file for appending goes on appending to it. Returns rows kept.

    Debris is repaired, never fatal: a row cut short by a kill, a repeated header or a repeated
    epoch (left by two processes that once wrote one folder) are dropped."""
    path = Path(path)
    if not path.is_file():
        return 0
    with open(path, "rb+") as f:
        lines = f.readlines()
        if not lines or not lines[0].endswith(b"\n"):
            f.truncate(0)  # not even a whole header: CSVLogger writes a new one
            return 0
        kept, rows = [lines[0]], 0
        for line in lines[1:]:
            if not line.endswith(b"\n") or rows >= epochs:
                break  # a row cut short by a kill, or an epoch after the commit
            if line == lines[0]:
                continue  # a repeated header
            try:
                epoch = int(line.split(b",", 1)[0])
            except ValueError:
                break  # a garbled row: it and what follows are redone
            if epoch < rows:
                continue  # the same epoch written twice
            if epoch != rows:
                break
            kept.append(line)
            rows += 1
        content = b"".join(kept)
        if content != b"".join(lines):
            f.seek(0)
            f.write(content)
            f.truncate(len(content))
    return rows


def _resume_allows(key: str, stored, now) -> bool:
    """Whether a resumed run may have `now` where it was started with `stored`."""
    if key in RESUME_FREE_KEYS or stored == now:
        return True
    return key in RESUME_GROWING_KEYS and isinstance(stored, int) and now > stored


def check_same_config(run_dir, cfg) -> None:
    """Refuse to resume `run_dir` with a config that trains something else (ConfigError naming the keys)."""
    stored_file = Path(run_dir) / "config.yaml"
    if not stored_file.is_file():
        log.warning("resuming %s without its config.yaml: cannot check the config is the same", run_dir)
        return
    try:
        stored = config_lib.load(stored_file, stored=True).to_dict()
    except FractureError as exc:
        raise ConfigError(f"cannot read the config of the run to resume ({exc}); pick a new run_name") from exc
    now = cfg.to_dict()
    differ = [f"{key}: {stored[key]!r} (stored) != {now[key]!r} (now)"
              for key in now if not _resume_allows(key, stored.get(key), now[key])]
    if differ:
        raise ConfigError(
            f"run {run_dir} was started with another config, and resuming would mix two trainings: "
            f"{'; '.join(differ)}. Resume with the stored values (`python -m fracture train --config "
            f"{stored_file}`) or pick a new run_name. Keys that may change on resume: {', '.join(RESUME_FREE_KEYS)}; "
            f"that may grow: {', '.join(RESUME_GROWING_KEYS)}.")


# --------------------------------------------------------------------------------------------
# Keras callbacks
# --------------------------------------------------------------------------------------------
def checkpoint_bytes(model) -> int:
    """Room one epoch needs in backup/: weights and optimizer slots (up to two per weight, Adam)
    in the commit, and the weights once more in a best model."""
    return 4 * diskspace.model_bytes(model)


def nonfinite_message(run_dir, cfg, state: dict) -> str:
    return (f"the training loss of {Path(run_dir).name} became NaN or infinite in epoch {state['nonfinite_epoch']}, "
            f"so training stopped there. The likely cause is a learning rate too high for this model and data "
            f"(learning_rate={cfg.learning_rate}, optimizer={cfg.optimizer}): try a tenth of it.")


def _finite(logs, *keys) -> bool:
    return all(np.isfinite(float(np.asarray(logs[k]))) for k in keys if logs and k in logs and logs[k] is not None)


class StopOnNonFinite(keras.callbacks.TerminateOnNaN):
    """TerminateOnNaN that says which epoch and why; RunBackup records the epoch in the commit
    (`nonfinite_epoch`, with stopped=true), so a rerun goes straight to the final stage instead
    of training into the same NaN again."""

    def on_epoch_end(self, epoch, logs=None):
        if not _finite(logs, "loss"):
            self.model.stop_training = True
        if self.model.stop_training and not _finite(logs, "loss"):
            log.error("loss is %s in epoch %d: training stops (learning rate too high?)", (logs or {}).get("loss"),
                      epoch + 1)


def _save_or_storage_error(save, path: Path, needed: int, what: str) -> None:
    """`save()` writes `path` (a Keras/h5py file) only when it fits; an out-of-space or permission
    error during the write leaves no partial file under that name and becomes a StorageError."""
    diskspace.require_free(path.parent, needed, what)
    try:
        save()
    except BaseException as exc:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        raise diskspace.storage_error(exc, path, needed) or exc


class BestModel(keras.callbacks.ModelCheckpoint):
    """ModelCheckpoint (val_auc, best only) into backup/best-NNNN.keras that remembers the epoch it saved.

    One file per improving epoch: a kill mid-save leaves a file no commit names, never a half-written
    best model. RunBackup sets `best` and `best_epoch` from the commit it resumes from."""

    def __init__(self, backup_dir):
        require_keras_callbacks()
        super().__init__(str(Path(backup_dir) / "best-{epoch:04d}.keras"), monitor="val_auc", mode="max",
                         save_best_only=True)
        self.best_epoch = None

    def _save_model(self, epoch, batch, logs):
        if not _finite(logs, "loss", "val_loss"):
            return  # a NaN model can score a val_auc (all ties), but must never become the best one
        before = self.best
        path = Path(self._get_file_path(epoch, batch, logs))
        _save_or_storage_error(lambda: super(BestModel, self)._save_model(epoch, batch, logs), path,
                               diskspace.model_bytes(self.model), f"the best model of epoch {epoch + 1}")
        if self.best is not before:  # ModelCheckpoint rebinds `best` exactly when it saves
            self.best_epoch = epoch + 1


class RunBackup(keras.callbacks.BackupAndRestore):
    """BackupAndRestore that commits each epoch as a new folder by rename (see the module doc).

    Must come after every callback that writes the run folder: its on_epoch_end is the commit point.
    On train begin it restores the newest readable commit (falling back to the one before), cuts
    history.csv back to it and hands the best score and counters back to the other callbacks."""

    def __init__(self, run_dir, checkpoint: BestModel, stateful=()):
        require_keras_callbacks()
        super().__init__(str(Path(run_dir) / BACKUP), delete_checkpoint=False)
        missing = [f"keras.callbacks.BackupAndRestore().{name}" for name in KERAS_PRIVATE_ATTRIBUTES
                   if not isinstance(getattr(self, name, None), str)]
        if missing:  # _restore_newest_readable points these at a commit before Keras's _load_model reads them
            raise _keras_mismatch(missing)
        self.run_dir = Path(run_dir)
        self.checkpoint = checkpoint
        self.stateful = [cb for cb in stateful if cb is not None]
        self.state = fresh_state()
        self._started = time.perf_counter()

    # --- restore ----------------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        self.state = self._restore_newest_readable()
        self._tidy()
        rows = cut_history(self.run_dir / "history.csv", self.state["epoch"])
        if rows != self.state["epoch"]:
            log.warning("history.csv holds %d of the %d committed epochs", rows, self.state["epoch"])
        self.checkpoint.best = self.state["best_value"]
        self.checkpoint.best_epoch = self.state["best_epoch"]
        for cb in self.stateful:
            for key, value in self.state["callbacks"].get(type(cb).__name__, {}).items():
                setattr(cb, key, value)
        if self.state["epoch"]:
            log.info("resuming %s after epoch %d (best val_auc %s at epoch %s)", self.run_dir.name,
                     self.state["epoch"], self.state["best_value"], self.state["best_epoch"])

    def _restore_newest_readable(self) -> dict:
        model = self.model
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        variables = list(model.variables) + list(model.optimizer.variables if model.optimizer else [])
        initial = None
        for folder in commits(self.run_dir):
            initial = initial or [keras.ops.convert_to_numpy(v) for v in variables]
            self._weights_path = str(folder / WEIGHTS)
            self._training_metadata_path = str(folder / STATE)
            try:
                if not (folder / WEIGHTS).is_file():
                    raise FileNotFoundError(f"{WEIGHTS} is missing")
                self._load_model()  # Keras: load weights + optimizer, initial epoch from state.json
                return {**fresh_state(), **read_state(folder)}
            except Exception as exc:  # a truncated or corrupt backup of any kind must not block the run
                broken = folder.with_name(folder.name + ".broken")
                shutil.rmtree(broken, ignore_errors=True)
                folder.rename(broken)
                log.warning("backup %s cannot be read (%s: %s); moved to %s and falling back to the commit "
                            "before it", folder, type(exc).__name__, exc, broken.name)
        if initial is not None:  # every commit was broken: start over from the untouched initial weights
            for variable, value in zip(variables, initial):
                variable.assign(value)
            log.warning("no readable backup in %s: training %s starts again at epoch 1", self.backup_dir,
                        self.run_dir.name)
        self.model._initial_epoch = 0
        return fresh_state()

    def _tidy(self) -> None:
        """Remove what no kept commit names: half-written epoch folders, old commits, stray best models."""
        backup = Path(self.backup_dir)
        for partial in backup.glob("epoch-*.partial"):
            shutil.rmtree(partial, ignore_errors=True)
        kept = commits(self.run_dir)[:KEEP]
        for old in commits(self.run_dir)[KEEP:]:
            shutil.rmtree(old, ignore_errors=True)
        named = set()
        for folder in kept:
            try:
                named.add(read_state(folder)["best_model"])
            except (OSError, ValueError, KeyError):
                pass
        for best in backup.glob("best-*.keras"):
            if best.name not in named:
                best.unlink(missing_ok=True)

    # --- commit -----------------------------------------------------------------------------
    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self._current_epoch = epoch + 1
        self.state = self._next_state(epoch)
        if not _finite(logs, "loss"):
            self.state.update(stopped=True, nonfinite_epoch=epoch + 1)
        self._commit(epoch + 1)

    def _next_state(self, epoch: int) -> dict:
        best_epoch = self.checkpoint.best_epoch
        return {
            "epoch": epoch + 1,
            "best_value": _plain(self.checkpoint.best),
            "best_epoch": best_epoch,
            "best_model": f"best-{best_epoch:04d}.keras" if best_epoch else None,
            "stopped": bool(self.model.stop_training),
            "train_seconds": self.state["train_seconds"] + time.perf_counter() - self._started,
            "callbacks": {type(cb).__name__: {k: _plain(getattr(cb, k)) for k in CALLBACK_STATE if hasattr(cb, k)}
                          for cb in self.stateful},
        }

    def _commit(self, epochs_done: int) -> None:
        backup = Path(self.backup_dir)
        final = backup / f"epoch-{epochs_done:04d}"
        partial = backup / f"epoch-{epochs_done:04d}.partial"
        shutil.rmtree(partial, ignore_errors=True)

        def write():
            partial.mkdir(parents=True)
            self.model.save_weights(str(partial / WEIGHTS), overwrite=True)
            (partial / STATE).write_text(json.dumps(self.state, indent=2))
            for name in (WEIGHTS, STATE):
                fileio.fsync_file(partial / name)

        _save_or_storage_error(write, partial, checkpoint_bytes(self.model) - diskspace.model_bytes(self.model),
                               f"the checkpoint of epoch {epochs_done}")
        if self.state["best_model"]:
            fileio.fsync_file(backup / self.state["best_model"])
        shutil.rmtree(final, ignore_errors=True)  # only a leftover from a redone epoch can be there
        partial.rename(final)  # the commit point
        fileio.fsync_dir(backup)
        self._tidy()


def _plain(value):
    """A JSON-friendly copy of a callback attribute (numpy and backend scalars become floats/ints)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return float(np.asarray(keras.ops.convert_to_numpy(value)))
