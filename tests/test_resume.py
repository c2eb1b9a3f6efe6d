"""The resume contract (fracture/resume.py) under real `kill -9`.

One run folder is trained by a chain of subprocesses, each of which SIGKILLs itself at a chosen
moment (mid-write of the best model, mid-write of the backup, between the model and the backup
write, between epochs, mid-write of the final model.keras, during the final plots); the last one
runs to the end. Every process also saves each epoch's weights to a side folder, so the final
model.keras is checked against the weights of the best epoch recorded independently of the run
folder, not against itself. The cheaper tests fabricate run folders or interrupt in-process.
"""

import json
import re
import os
import signal
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

import fracture as fr
from fracture import fileio, resume, training
from fracture.errors import ConfigError, FractureError
from fracture.runs import find_run
from tests.conftest import tiny_config

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 5
# VGG16 with a few trainable layers is fast at 32 px; with this seed its val AUC goes up and down
# (a later epoch worse than an earlier one), which is what made the old ModelCheckpoint lose the best.
CHAIN = dict(backbone="VGG16", trainable_layers=6, dropout=0.0, dense_units=[64, 32, 16], seed=1,
             learning_rate=1e-3, epochs=EPOCHS, run_name="chain")

DRIVER = r'''
import contextlib, json, logging, os, signal, sys
from pathlib import Path

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
import keras
import numpy as np

import fracture as fr
from fracture import fileio, plots, training

cfg = fr.load_config(overrides=json.loads(sys.argv[1]), frozen_random_backbone=True)
plan, side = json.loads(sys.argv[2]), Path(sys.argv[3])
side.mkdir(exist_ok=True)
kill, calls = plan.get("kill"), []


def die(truncate=None):
    """SIGKILL this process, after cutting `truncate` to half its size (a write cut short)."""
    if truncate is not None:
        os.truncate(truncate, os.path.getsize(truncate) // 2)
    os.kill(os.getpid(), signal.SIGKILL)


class SideRecord(keras.callbacks.Callback):
    """Each epoch's weights, kept outside the run folder (first callback: before any commit)."""

    def on_epoch_begin(self, epoch, logs=None):
        if kill == "epoch_begin" and epoch + 1 == plan["epoch"]:
            die()

    def on_epoch_end(self, epoch, logs=None):
        np.savez(side / f"epoch-{epoch + 1}.npz", *self.model.get_weights())
        with open(side / "trained.txt", "a") as f:
            f.write(f"{os.getpid()} {epoch + 1}\n")


make_callbacks = training.make_callbacks
training.make_callbacks = lambda cfg, run_dir: [SideRecord(), *make_callbacks(cfg, run_dir)]

save, save_weights, atomic_path = keras.Model.save, keras.Model.save_weights, fileio.atomic_path


def killing_save(self, filepath, *args, **kwargs):
    save(self, filepath, *args, **kwargs)
    epoch = int(Path(filepath).stem.split("-")[-1]) if "best-" in str(filepath) else 0
    if kill == "best_model_mid" and epoch >= plan["min_epoch"]:
        die(truncate=filepath)


def killing_save_weights(self, filepath, *args, **kwargs):
    if "backup" in str(filepath):
        calls.append(filepath)
        if kill == "backup_before" and len(calls) == plan["nth"]:
            die()
    save_weights(self, filepath, *args, **kwargs)
    if kill == "backup_mid" and len(calls) == plan.get("nth"):
        die(truncate=filepath)


@contextlib.contextmanager
def killing_atomic_path(path):
    with atomic_path(path) as tmp:
        yield tmp
        if kill == "final_model_mid" and Path(path).name == "model.keras":
            die(truncate=tmp)


keras.Model.save, keras.Model.save_weights, fileio.atomic_path = killing_save, killing_save_weights, killing_atomic_path
if kill == "plots":
    plots.save_plots = lambda *args, **kwargs: die()
fr.train(cfg)
'''


@pytest.fixture(scope="module")
def wide_data(tmp_path_factory):
    """A synthetic tree with 20 validation images (the shared one has 5: val AUC barely moves)."""
    out = tmp_path_factory.mktemp("wide")
    return fr.generate_synthetic(out, patients=30, seed=3, max_size=96, min_size=64)


def run_driver(cfg, plan: dict, side: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2",
           "KERAS_BACKEND": keras.backend.backend()}
    return subprocess.run([sys.executable, "-c", DRIVER, json.dumps(cfg.to_dict()), json.dumps(plan), str(side)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def killed(proc) -> bool:
    return proc.returncode == -signal.SIGKILL


def committed(run_dir) -> list[int]:
    return [int(p.name.split("-")[1]) for p in resume.commits(run_dir)]


def history_epochs(run_dir) -> list[int]:
    return pd.read_csv(run_dir / "history.csv")["epoch"].tolist()


def trained_by(side: Path) -> list[tuple[int, int]]:
    """(pid, epoch) of every epoch the driver processes trained, in order."""
    lines = (side / "trained.txt").read_text().split() if (side / "trained.txt").is_file() else []
    return [(int(pid), int(epoch)) for pid, epoch in zip(lines[::2], lines[1::2])]


def side_model(run_dir, side: Path, epoch: int):
    """model.keras's architecture with the weights the side record saved at `epoch`."""
    model = keras.saving.load_model(run_dir / "model.keras", compile=False)
    with np.load(side / f"epoch-{epoch}.npz") as stored:
        model.set_weights([stored[f"arr_{i}"] for i in range(len(stored.files))])
    return model


@pytest.mark.slow
def test_kill_at_every_moment_then_resume_ends_with_the_best_epoch(wide_data, tmp_path):
    cfg = tiny_config(tmp_path, wide_data, **CHAIN)
    run_dir, side = Path(cfg.runs_dir) / "chain", tmp_path / "side"

    def step(plan, why):
        proc = run_driver(cfg, plan, side)
        assert killed(proc), f"{why}: expected a SIGKILL, got rc {proc.returncode}\n{proc.stderr[-3000:]}"
        return proc

    # 1. Mid-write of the best model at an improving epoch >= 2: the half file is named by no commit.
    step({"kill": "best_model_mid", "min_epoch": 2}, "best model mid-write")
    (done,) = committed(run_dir)[:1]
    assert history_epochs(run_dir) == list(range(done))
    assert not (run_dir / "model.keras").exists() and not resume.is_complete(run_dir)

    # 2. Mid-write of the backup of the redone epoch: the newest commit stays the previous one.
    step({"kill": "backup_mid", "nth": 1}, "backup mid-write")
    assert committed(run_dir)[0] == done and (run_dir / "backup" / f"epoch-{done + 1:04d}.partial").is_dir()
    assert history_epochs(run_dir) == list(range(done + 1))  # a ghost row the rerun must cut

    # 3. After the best model and history row of the 2nd epoch of this process, before its backup.
    step({"kill": "backup_before", "nth": 2}, "between model and backup write")
    assert committed(run_dir)[0] == done + 1

    # 4. Between epochs, then a truncated newest backup: the rerun must fall back to the one before.
    step({"kill": "epoch_begin", "epoch": done + 3}, "between epochs")
    assert committed(run_dir)[:2] == [done + 2, done + 1]
    weights = run_dir / "backup" / f"epoch-{done + 2:04d}" / resume.WEIGHTS
    os.truncate(weights, weights.stat().st_size // 3)

    # 5. Mid-write of the final model.keras, after the last epoch.
    proc = step({"kill": "final_model_mid"}, "final model.keras mid-write")
    assert f"epoch-{done + 2:04d}" in proc.stderr and "falling back" in proc.stderr
    assert committed(run_dir)[0] == EPOCHS and not (run_dir / "model.keras").exists()
    assert list(run_dir.glob(".model.keras.partial-*"))

    # 6. During the final evaluation (plots), then 7. to the end: neither trains an epoch again.
    trained_before = trained_by(side)
    step({"kill": "plots"}, "final evaluation")
    assert not resume.is_complete(run_dir)
    proc = run_driver(cfg, {}, side)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert trained_by(side) == trained_before, "a finished training was redone"
    assert "redoing only the final evaluation" in proc.stderr

    # The whole run: every epoch once, and the redone epochs really were redone (7 kills, 1 fallback).
    history = pd.read_csv(run_dir / "history.csv")
    assert history["epoch"].tolist() == list(range(EPOCHS))
    assert sorted({epoch for _, epoch in trained_before}) == list(range(1, EPOCHS + 1))
    assert history["val_auc"].nunique() > 1, "val AUC never moved: the best-epoch checks below prove nothing"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    best_epoch = int(history["val_auc"].idxmax()) + 1
    assert metrics["best_epoch"] == best_epoch and metrics["epochs_run"] == EPOCHS
    assert resume.is_complete(run_dir) and not (run_dir / "backup").exists()
    assert not list(run_dir.glob(".*partial*"))

    # model.keras is the best epoch's weights (as saved on the side), and the stored scores are its.
    stored = pd.read_csv(run_dir / "predictions_val.csv")
    final = fr.predict_paths(keras.saving.load_model(run_dir / "model.keras", compile=False), stored["path"])
    best = fr.predict_paths(side_model(run_dir, side, best_epoch), stored["path"])
    np.testing.assert_allclose(final["probability"], best["probability"], atol=1e-5)
    np.testing.assert_allclose(stored["probability"], best["probability"], atol=1e-5)
    others = [fr.predict_paths(side_model(run_dir, side, e), stored["path"])["probability"]
              for e in range(1, EPOCHS + 1) if e != best_epoch]
    assert all(np.abs(o - best["probability"]).max() > 1e-4 for o in others)  # so the check above can fail
    assert metrics["val"]["image"]["auc"] == pytest.approx(roc_auc_score(stored["label"], stored["probability"]))


class Crash(Exception):
    pass


@pytest.mark.slow  # two training runs (~18 s)
@pytest.mark.backend
def test_interrupted_run_resumes_on_this_backend(wide_data, tmp_path, monkeypatch, caplog):
    """An exception at epoch 3 (Ctrl-C, OOM...), then the same call: resumes after epoch 2."""
    cfg = tiny_config(tmp_path, wide_data, **{**CHAIN, "epochs": 3, "run_name": f"crash-{keras.backend.backend()}"})
    make_callbacks = training.make_callbacks

    class CrashAtEpoch3(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise Crash

    monkeypatch.setattr(training, "make_callbacks", lambda c, d: [CrashAtEpoch3(), *make_callbacks(c, d)])
    with pytest.raises(Crash):
        fr.train(cfg)
    run_dir = Path(cfg.runs_dir) / cfg.run_name
    assert committed(run_dir) == [2, 1] and resume.is_incomplete(run_dir)
    state = resume.read_state(run_dir / "backup" / "epoch-0002")
    history = pd.read_csv(run_dir / "history.csv")
    assert state["best_value"] == pytest.approx(history["val_auc"].max())

    monkeypatch.setattr(training, "make_callbacks", make_callbacks)
    with caplog.at_level("INFO", logger="fracture"):
        fr.train(cfg)
    assert "after epoch 2" in caplog.text
    history = pd.read_csv(run_dir / "history.csv")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert history["epoch"].tolist() == [0, 1, 2] and metrics["epochs_run"] == 3
    assert metrics["best_epoch"] == int(history["val_auc"].idxmax()) + 1
    with pytest.raises(FractureError, match="already complete"):
        fr.train(cfg)


# --------------------------------------------------------------------------------------------
# fabricated run folders: no training
# --------------------------------------------------------------------------------------------
def fake_run(runs_dir: Path, name: str, *, marker=True, backup=False, metrics=True) -> Path:
    run_dir = runs_dir / name
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("epochs: 1\n")
    (run_dir / "model.keras").write_bytes(b"not read by find_run")
    if metrics:
        (run_dir / "metrics.json").write_text("{}")
    if marker:
        (run_dir / resume.MARKER).write_text("{}")
    if backup:
        (run_dir / "backup").mkdir()
    return run_dir


def test_find_run_skips_incomplete_runs_and_says_so(tmp_path, caplog):
    done = fake_run(tmp_path, "a-done")
    later = fake_run(tmp_path, "b-later")
    killed_run = fake_run(tmp_path, "c-killed", marker=False, backup=True, metrics=False)
    unmarked = fake_run(tmp_path, "d-unmarked", marker=False)  # metrics.json, no backup/, but no complete.json
    os.utime(done / resume.MARKER, (1, 1))  # b-later completed later
    with caplog.at_level("WARNING", logger="fracture"):
        assert find_run(None, tmp_path) == later
    assert "c-killed" in caplog.text and "d-unmarked" in caplog.text and "a-done" not in caplog.text
    with pytest.raises(FractureError, match="incomplete"):
        find_run(unmarked)
    with pytest.raises(FractureError, match=r"incomplete.*python -m fracture train --config"):
        find_run(killed_run)
    with pytest.raises(FractureError, match="incomplete"):
        find_run(killed_run / "model.keras")
    assert find_run(done) == done


def test_find_run_with_only_incomplete_runs_is_an_error(tmp_path):
    fake_run(tmp_path, "killed", marker=False, backup=True)
    with pytest.raises(FractureError, match="no trained run"):
        find_run(None, tmp_path)


def committed_fake(tmp_path, data_dir=None, **overrides):
    """A run folder with config.yaml and one committed epoch, as a killed run leaves it."""
    cfg = tiny_config(tmp_path, data_dir or tmp_path / "data", run_name="resumable", **overrides)
    run_dir = Path(cfg.runs_dir) / "resumable"
    (run_dir / "backup" / "epoch-0001").mkdir(parents=True)
    (run_dir / "backup" / "epoch-0001" / resume.STATE).write_text(json.dumps(resume.fresh_state() | {"epoch": 1}))
    cfg.to_yaml(run_dir / "config.yaml")
    return cfg, run_dir


def test_resuming_with_a_changed_key_names_it(tmp_path, synth_root):
    cfg, run_dir = committed_fake(tmp_path, synth_root)
    changed = fr.load_config(overrides={**cfg.to_dict(), "learning_rate": 0.05, "dropout": 0.1})
    with pytest.raises(ConfigError, match=r"dropout: 0\.3 \(stored\) != 0\.1 \(now\); learning_rate: 0\.001 \(stored\) != 0\.05"):
        fr.train(changed)
    assert not (run_dir / "history.csv").exists()  # refused before anything was written
    assert "learning_rate: 0.001" in (run_dir / "config.yaml").read_text()
    # Where files go and whether MLflow watches do not change what is trained.
    resume.check_same_config(run_dir, fr.load_config(overrides={**cfg.to_dict(), "mlflow": True,
                                                                 "cache_dir": str(tmp_path / "elsewhere")}))


def test_resuming_may_raise_the_epoch_cap_but_not_lower_it(tmp_path, synth_root):
    """A higher cap continues the same training (the schedule counts epochs from the start); a lower
    one would cut a training short that was set up for more: refused."""
    cfg, run_dir = committed_fake(tmp_path, synth_root, epochs=3)
    resume.check_same_config(run_dir, fr.load_config(overrides={**cfg.to_dict(), "epochs": 8}))
    with pytest.raises(ConfigError, match=r"epochs: 3 \(stored\) != 2 \(now\)"):
        resume.check_same_config(run_dir, fr.load_config(overrides={**cfg.to_dict(), "epochs": 2}))


def test_cut_history_drops_rows_after_the_commit_and_half_rows(tmp_path):
    path = tmp_path / "history.csv"
    path.write_bytes(b"epoch,val_auc\n0,0.5\n1,0.6\n2,0.7\n3,0.")
    assert resume.cut_history(path, 2) == 2
    assert path.read_bytes() == b"epoch,val_auc\n0,0.5\n1,0.6\n"
    assert resume.cut_history(path, 0) == 0 and path.read_bytes() == b"epoch,val_auc\n"


def test_atomic_path_keeps_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "model.keras"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with fileio.atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp.name.endswith(".keras")  # Keras picks the format by suffix
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["model.keras"]
    fileio.atomic_write_text(target, "new")
    assert target.read_text() == "new" and len(list(tmp_path.iterdir())) == 1


def test_remove_partials_sweeps_what_a_kill_left(tmp_path):
    (tmp_path / ".metrics.json.partial-x1y2.json").write_text("{")
    (tmp_path / "metrics.json").write_text("{}")
    assert [p.name for p in fileio.remove_partials(tmp_path)] == [".metrics.json.partial-x1y2.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


# --------------------------------------------------------------------------------------------
# the private Keras members the resume callbacks build on
# --------------------------------------------------------------------------------------------
def test_pyproject_pins_keras_to_the_range_resume_supports_and_the_installed_one_is_in_it():
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    (keras_spec,) = [Requirement(d).specifier for d in project["dependencies"] if Requirement(d).name == "keras"]
    assert str(keras_spec) == str(Requirement(f"keras{resume.KERAS_SUPPORTED}").specifier)
    assert keras.__version__ in keras_spec
    assert "3.16.0" not in keras_spec  # an upper bound: a new Keras may move the private members


@pytest.mark.parametrize("cls, name", [(cls, name) for cls, names in resume.KERAS_PRIVATE.items() for name in names])
def test_a_keras_without_a_private_method_is_refused_by_name(tmp_path, monkeypatch, cls, name):
    klass = getattr(keras.callbacks, cls)
    owner = next(c for c in klass.__mro__ if name in vars(c))  # where Keras defines it (a base class for some)
    monkeypatch.delattr(owner, name)
    with pytest.raises(FractureError, match=rf"Keras {keras.__version__} lacks keras\.callbacks\.{cls}\.{name}\b.*"
                                            rf"keras{re.escape(resume.KERAS_SUPPORTED)}"):
        resume.RunBackup(tmp_path, resume.BestModel(tmp_path / resume.BACKUP))


@pytest.mark.parametrize("name", resume.KERAS_PRIVATE_ATTRIBUTES)
def test_a_keras_whose_backup_callback_lacks_a_private_path_is_refused_by_name(tmp_path, monkeypatch, name):
    real_init = keras.callbacks.BackupAndRestore.__init__

    def init_without(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        delattr(self, name)

    best = resume.BestModel(tmp_path / resume.BACKUP)
    monkeypatch.setattr(keras.callbacks.BackupAndRestore, "__init__", init_without)
    with pytest.raises(FractureError, match=rf"lacks keras\.callbacks\.BackupAndRestore\(\)\.{name}\b"):
        resume.RunBackup(tmp_path, best)


def test_the_supported_keras_builds_both_callbacks(tmp_path):
    best = resume.BestModel(tmp_path / resume.BACKUP)
    assert resume.RunBackup(tmp_path, best).checkpoint is best
