"""Faults a lab actually meets, each injected on purpose (docs/faults.md describes what users see).

Concurrent writers, a full disk, a read-only folder, a corrupt decode cache, a NaN loss, duplicate
rows and keys, cv and ensemble folders as runs, a moved run folder, a stalled HTTP client, file
modes. Full disks and read-only folders are real tmpfs mounts where this process may mount one
(root), else the write is monkeypatched to fail with the same errno at that site.
"""

import errno
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import fracture as fr
from fracture import config as config_lib
from fracture import cv, data, diskspace, fileio, plots, resume, runlock, tracking, training
from fracture.cli import main
from fracture.errors import ConfigError, DataError, FractureError
from fracture.testing import free_port
from tests.conftest import REPO, lock_holder, tiny_config

FAST = dict(backbone="VGG16", trainable_layers=-1, dense_units=[8, 8, 4])  # quick at 32 px; from scratch, every layer trains


def one_error_line(err: str) -> str:
    """The CLI's single `error:` line (and no traceback)."""
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def tree_snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@contextmanager
def tmpfs(folder: Path, size: str, readonly: bool = False):
    """A real tmpfs at `folder` (yields True), or nothing mounted (yields False) where mounting is not allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if readonly else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                             capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], check=False)


def raise_errno_for(monkeypatch, folder: Path, code: int):
    """Fallback where no tmpfs can be mounted: creating a file under `folder` fails with `code`."""
    import tempfile

    real_mkstemp, real_temporary = tempfile.mkstemp, tempfile.TemporaryFile

    def inside(d):
        return d is not None and str(Path(d).absolute()).startswith(str(folder.absolute()))

    def mkstemp(*args, dir=None, **kwargs):
        if inside(dir):
            raise OSError(code, os.strerror(code), str(dir))
        return real_mkstemp(*args, dir=dir, **kwargs)

    def temporary(*args, dir=None, **kwargs):
        if inside(dir):
            raise OSError(code, os.strerror(code), str(dir))
        return real_temporary(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(tempfile, "TemporaryFile", temporary)


def patch_everywhere(patch, owner, name: str, replacement) -> None:
    """Replace `owner.name` and every `from owner import name` binding in the package's modules.
    Every fracture module is imported first: one imported for the first time while the patch is
    on would keep the replacement for the rest of the session."""
    import importlib
    import pkgutil

    for info in pkgutil.walk_packages(fr.__path__, "fracture."):
        if not info.name.endswith("__main__"):
            try:
                importlib.import_module(info.name)
            except ImportError:  # an optional dependency (onnxruntime...): then the test cannot load it either
                pass
    original = getattr(owner, name)
    patch.setattr(owner, name, replacement)
    for module in [m for key, m in sys.modules.items() if key.startswith("fracture") and m is not owner]:
        if getattr(module, name, None) is original:
            patch.setattr(module, name, replacement)


def cli_args(cfg, **extra) -> list[str]:
    values = {**cfg.to_dict(), **extra}
    return [f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in values.items()]


# --------------------------------------------------------------------------------------------
# 1. one writer per run folder
# --------------------------------------------------------------------------------------------
def test_a_second_train_of_a_live_run_is_refused_naming_the_holder_and_touches_nothing(train_data, tmp_path,
                                                                                       capsys):
    cfg = tiny_config(tmp_path, train_data, run_name="shared", **FAST)
    run_dir = Path(cfg.runs_dir) / "shared"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(config_lib.yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    (run_dir / "history.csv").write_text("epoch,loss\n0,0.7\n")
    before = tree_snapshot(run_dir)
    with lock_holder(run_dir) as holder:
        code = main(["train", *cli_args(cfg)])
        line = one_error_line(capsys.readouterr().err)
        assert code == 2 and f"PID {holder.pid}" in line, line
        assert tree_snapshot(run_dir) == before  # nothing in the folder was touched
    with runlock.hold(run_dir, "train"):  # the kernel released the dead holder's lock
        pass


def test_history_with_a_repeated_header_and_a_torn_row_is_repaired_not_fatal(tmp_path):
    path = tmp_path / "history.csv"
    path.write_bytes(b"epoch,loss\n0,0.7\nepoch,loss\n0,0.7\n1,0.6\n2,0.5")  # what two writers leave
    assert resume.cut_history(path, 5) == 2
    assert path.read_bytes() == b"epoch,loss\n0,0.7\n1,0.6\n"
    assert pd.read_csv(path)["epoch"].tolist() == [0, 1]


# --------------------------------------------------------------------------------------------
# 2. out of space or permission: an error, not a crash
# --------------------------------------------------------------------------------------------
def test_a_disk_too_small_for_one_checkpoint_is_refused_before_training(train_data, tmp_path, capsys,
                                                                       monkeypatch):
    runs = tmp_path / "small"
    with tmpfs(runs, "64k") as mounted:
        if not mounted:
            monkeypatch.setattr(diskspace, "free_bytes", lambda path: 64 * 1024)
        cfg = tiny_config(tmp_path, train_data, run_name="big", runs_dir=str(runs), **FAST)
        code = main(["train", *cli_args(cfg)])
        line = one_error_line(capsys.readouterr().err)
        assert code == 2 and "not enough space" in line and "MB needed" in line, line
        assert not (runs / "big").exists()


def test_no_space_at_each_write_site_is_one_error_and_the_rerun_resumes(train_data, tmp_path, monkeypatch,
                                                                        capsys):
    """ENOSPC raised by the write itself (the disk filled behind the space check), at each site in
    turn: the best model of epoch 1, the commit of epoch 2, metrics.json. Each time: one error
    naming the file, no partial file under its final name, the committed epochs kept; the rerun
    after space is back continues where the last one stopped and the fourth completes the run."""
    import keras

    cfg = tiny_config(tmp_path, train_data, run_name="full", epochs=2, **FAST)
    run_dir = Path(cfg.runs_dir) / "full"
    no_space = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    real_weights, real_text = keras.Model.save_weights, fileio.atomic_write_text

    def half_model(self, path, *args, **kwargs):
        Path(path).write_bytes(b"half a model")
        raise no_space

    def weights_full_at_epoch_2(self, path, *args, **kwargs):
        if "epoch-0002" in str(path):
            Path(path).write_bytes(b"half")
            raise no_space
        return real_weights(self, path, *args, **kwargs)

    def metrics_full(path, text):
        if Path(path).name == "metrics.json":
            with fileio.atomic_path(path) as tmp:
                tmp.write_text(text[:10])
                raise no_space
        return real_text(path, text)

    sites = [(keras.Model, "save", half_model, "best-0001.keras"),
             (keras.Model, "save_weights", weights_full_at_epoch_2, "epoch-0002"),
             (fileio, "atomic_write_text", metrics_full, "metrics.json")]
    committed = []
    for owner, name, broken, named in sites:
        with monkeypatch.context() as patch:
            patch_everywhere(patch, owner, name, broken)
            code = main(["train", *cli_args(cfg)])
        line = one_error_line(capsys.readouterr().err)
        assert code == 2 and named in line and "No space left on device" in line and "rerun" in line, line
        files = [p for p in run_dir.rglob("*")]
        assert not [p for p in files if fileio.PARTIAL in p.name or p.name.endswith(".partial")], files
        assert not [p for p in files if p.suffix == ".keras" and p.read_bytes() == b"half a model"]
        assert not (run_dir / "metrics.json").exists() and not resume.is_complete(run_dir)
        committed.append((resume.latest_state(run_dir) or {}).get("epoch", 0))
    assert committed == [0, 1, 2]  # each rerun went on from the last commit, none was lost
    assert main(["train", *cli_args(cfg)]) == 0  # space is back: the same command completes the run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs_run"] == 2 and resume.is_complete(run_dir)
    assert pd.read_csv(run_dir / "history.csv")["epoch"].tolist() == [0, 1]


FILLED_BEHIND_THE_CHECK = r"""
import sys
from fracture import diskspace
from fracture.cli import main
diskspace.free_bytes = lambda path: 1 << 40  # the disk fills after each space check: the writes meet it
sys.exit(main(sys.argv[1:]))
"""


def test_a_real_disk_filling_during_a_model_write_is_one_error_not_a_crash(train_data, tmp_path):
    """Keras writes its .keras zip and its .h5 weights on a real, small tmpfs that fills in the middle
    of a write (the space check is told there is room, as when another process fills the disk after
    it): the process ends with exit 2 and one error line, not a segfault or a traceback, and no
    partial file is left under a final name."""
    runs = tmp_path / "filling"
    with tmpfs(runs, "80m") as mounted:  # the tiny VGG16 is ~59 MB: its first model fits, a second does not
        if not mounted:
            pytest.skip("mounting a tmpfs needs root here; the monkeypatched ENOSPC test above covers each write site")
        cfg = tiny_config(tmp_path, train_data, run_name="fill", runs_dir=str(runs), epochs=2, **FAST)
        done = subprocess.run([sys.executable, "-c", FILLED_BEHIND_THE_CHECK, "train", *cli_args(cfg)],
                              capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert done.returncode == 2, (done.returncode, done.stderr[-3000:])  # < 0 would be a signal (segfault)
        line = one_error_line(done.stderr)
        assert "No space left on device" in line and "rerun" in line, line
        files = list((runs / "fill").rglob("*"))
        assert not [p for p in files if fileio.PARTIAL in p.name or p.name.endswith(".partial")], files
        assert not resume.is_complete(runs / "fill")


def test_a_read_only_runs_dir_is_one_error_before_any_work(train_data, tmp_path, monkeypatch, capsys):
    runs = tmp_path / "readonly"
    with tmpfs(runs, "1m", readonly=True) as mounted:
        if not mounted:
            raise_errno_for(monkeypatch, runs, errno.EROFS)
        cfg = tiny_config(tmp_path, train_data, run_name="ro", runs_dir=str(runs), **FAST)
        started = time.perf_counter()
        code = main(["train", *cli_args(cfg)])
        line = one_error_line(capsys.readouterr().err)
        assert code == 2 and "runs_dir=" in line and "not writable" in line, line
        assert time.perf_counter() - started < 5


@pytest.mark.parametrize("key", ["runs_dir", "cache_dir"])
def test_a_folder_whose_parent_is_a_file_is_one_error_and_leaves_no_run(train_data, tmp_path, capsys, key):
    (tmp_path / "afile").write_text("not a folder")
    cfg = tiny_config(tmp_path, train_data, run_name="nowhere", **FAST)
    code = main(["train", *cli_args(cfg, **{key: str(tmp_path / "afile" / "sub")})])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and key in line and "is a file" in line, line
    assert not (Path(cfg.runs_dir) / "nowhere").exists()


def test_evaluate_in_a_read_only_folder_prints_the_scores_then_says_storing_failed(trained_run, tmp_path,
                                                                                 monkeypatch, capsys):
    lab = tmp_path / "lab"
    with tmpfs(lab, "512m") as mounted:
        run_dir = lab / "tiny"
        shutil.copytree(trained_run, run_dir)
        before = tree_snapshot(run_dir)
        if mounted:
            subprocess.run(["mount", "-o", "remount,ro", str(lab)], check=True)
        else:
            raise_errno_for(monkeypatch, run_dir, errno.EROFS)
        code = main(["evaluate", "--run", str(run_dir), "--split", "val"])
        out, err = capsys.readouterr()
        line = one_error_line(err)
        assert code == 2 and "computed but not stored" in line and "read-only" in line.lower(), line
        expected = json.loads((trained_run / "metrics.json").read_text())["val"]["study"]["auc"]
        assert "val split" in out and f"{expected:.2f}" in out  # the scores came first
        assert tree_snapshot(run_dir) == before


# --------------------------------------------------------------------------------------------
# 3. a cache that checks itself
# --------------------------------------------------------------------------------------------
def garble(path: Path, how: str) -> None:
    raw = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "header":
        raw[10:40] = b"\xff" * 30
        path.write_bytes(raw)
    elif how == "pixel":  # one byte deep inside the pixel array: the header still parses
        raw[-7] ^= 0x5A
        path.write_bytes(raw)
    elif how == "binary":
        path.write_bytes(b"\xff\xfe\x00garbage\x80\x81")


CACHE_CASES = [(".npy", "truncate"), (".npy", "empty"), (".npy", "header"), (".npy", "pixel"),
               (".ok.npy", "truncate"), (".ok.npy", "pixel"), (".skipped.csv", "binary"),
               (".check.json", "binary"), (".check.json", "missing"), (".check.json", "foreign")]


@pytest.mark.parametrize("suffix,how", CACHE_CASES)
def test_a_damaged_cache_entry_is_named_in_a_warning_and_rebuilt(synth_root, tmp_path, caplog, suffix, how):
    files = sorted((synth_root / "train").rglob("*.png"))[:4]
    fresh, fresh_ok, _ = data.load_images(files, 32)  # no cache: the independent reference
    cache = tmp_path / "cache"
    data.load_images(files, 32, cache)
    (entry,) = cache.glob("*.check.json")
    target = entry.with_name(entry.name.replace(".check.json", suffix))
    if how == "missing":
        target.unlink()
    elif how == "foreign":  # another entry's check file (other images) copied over this one's
        other = data.load_images(files[:3], 32, tmp_path / "other")
        shutil.copy(next((tmp_path / "other").glob("*.check.json")), target)
        del other
    else:
        garble(target, how)
    caplog.clear()
    images, ok, skipped = data.load_images(files, 32, cache)
    assert np.array_equal(np.asarray(images), fresh) and np.array_equal(ok, fresh_ok) and skipped.empty
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(str(entry.with_name(entry.name.replace(".check.json", ".npy"))) in m for m in warned), warned
    caplog.clear()
    data.load_images(files, 32, cache)  # rebuilt: quiet again
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


# --------------------------------------------------------------------------------------------
# 4. finite or stopped
# --------------------------------------------------------------------------------------------
def poison_from_epoch(monkeypatch, epoch: int):
    """Every weight becomes NaN at the start of `epoch` (1-based): the loss is NaN from then on."""
    import keras

    real = training.make_callbacks

    class Poison(keras.callbacks.Callback):
        def on_epoch_begin(self, e, logs=None):
            if e + 1 == epoch:
                for v in self.model.trainable_variables:
                    v.assign(keras.ops.full(v.shape, float("nan"), v.dtype))

    monkeypatch.setattr(training, "make_callbacks", lambda cfg, run_dir: [Poison(), *real(cfg, run_dir)])


def test_a_nan_loss_stops_training_and_the_run_completes_from_the_best_finite_epoch(train_data, tmp_path,
                                                                                  monkeypatch, caplog):
    poison_from_epoch(monkeypatch, 2)
    cfg = tiny_config(tmp_path, train_data, run_name="nan2", epochs=4, **FAST)
    run_dir = fr.train(cfg)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["best_epoch"] == 1 and metrics["nonfinite_epoch"] == 2 and metrics["epochs_run"] == 2
    assert np.isfinite(metrics["val"]["image"]["auc"])
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "epoch 2" in text and "learning_rate=" in text and "best finite epoch, 1" in text


def test_a_nan_loss_with_no_finite_epoch_is_refused_cleanly_and_the_rerun_does_not_train_again(
        train_data, tmp_path, monkeypatch):
    import keras

    poison_from_epoch(monkeypatch, 1)
    cfg = tiny_config(tmp_path, train_data, run_name="nan1", epochs=3, **FAST)
    with pytest.raises(FractureError, match=r"epoch 1.*learning_rate=0\.001.*new\s+run_name"):
        fr.train(cfg)
    fits = []
    monkeypatch.setattr(keras.Model, "fit", lambda *a, **k: fits.append(1))
    with pytest.raises(FractureError, match="epoch 1"):
        fr.train(cfg)
    assert fits == []  # the rerun went straight to the same clear refusal


@pytest.mark.parametrize("override,message", [
    ("learning_rate=inf", "learning_rate"), ("learning_rate=.nan", "learning_rate"),
    ("learning_rate=1e6", "learning_rate must be in"), ("momentum=-.inf", "momentum"),
    ("epochs=1.0e+9", "epochs"), ("epochs=2.0", "epochs"), ("epochs=1000000000", "epochs must be between"),
    ("threshold=.inf", "threshold"),
])
def test_floats_must_be_finite_and_in_range_and_integers_integers(override, message):
    with pytest.raises(ConfigError, match=message):
        config_lib.load(overrides=[override])


# --------------------------------------------------------------------------------------------
# 5. data that is wrong is refused early
# --------------------------------------------------------------------------------------------
def test_an_image_listed_twice_is_refused_before_any_work(synth_root, tmp_path, capsys):
    root = tmp_path / "MURA-v1.1"
    shutil.copytree(synth_root, root)
    csv = root / "valid_image_paths.csv"
    first = csv.read_text().splitlines()[0]
    with open(csv, "a") as f:
        f.write(f"./{first}\n")  # the same image, spelled another way
    with pytest.raises(DataError, match="more than once"):
        data.index_mura(root)
    cfg = tiny_config(tmp_path, root, run_name="dup")
    code = main(["train", *cli_args(cfg)])
    assert code == 2 and "more than once" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args,env,content,message", [
    (["train", "epochs=2", "epochs=3"], {}, None, "given twice on the command line"),
    (["train", "--config", "{cfg}"], {}, b"epochs: 2\nbatch_size: 4\nepochs: 3\n", r"'epochs' is given twice \(line 3\)"),
    (["train", "--config", "{cfg}"], {}, bytes(range(256)) * 4, "not UTF-8"),
    (["train", "epochs=2"], {"KERAS_BACKEND": "nope"}, None, "KERAS_BACKEND='nope' is not a Keras backend"),
])
def test_wrong_input_is_one_error_line_before_any_heavy_import(tmp_path, args, env, content, message):
    cfg_file = tmp_path / "cfg.yaml"
    if content is not None:
        cfg_file.write_bytes(content)
    proc = subprocess.run([sys.executable, "-m", "fracture", *[a.format(cfg=cfg_file) for a in args]],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO), **env})
    assert proc.returncode == 2, proc.stderr
    import re

    assert re.search(message, one_error_line(proc.stderr)), proc.stderr


# --------------------------------------------------------------------------------------------
# 6. cv and ensemble folders are runs like the others
# --------------------------------------------------------------------------------------------
def test_cv_lifecycle_interrupted_hint_refused_train_then_complete(train_data, tmp_path, monkeypatch, caplog, capsys):
    cfg = tiny_config(tmp_path, train_data, run_name="cvx", folds=2, **FAST)
    cv_dir = Path(cfg.runs_dir) / "cvx"
    real_train = training.train

    def train_then_stop(fold_cfg):
        if fold_cfg.fold == 1:
            raise KeyboardInterrupt  # Ctrl-C during the second fold
        return real_train(fold_cfg)

    monkeypatch.setattr(training, "train", train_then_stop)
    with pytest.raises(KeyboardInterrupt):
        cv.cross_validate(cfg)
    monkeypatch.setattr(training, "train", real_train)
    hint = resume.resume_hint(cv_dir)
    assert "fracture cv --config" in hint and "fracture train" not in hint, hint
    with pytest.raises(FractureError, match="cv folder, not a train run"):  # never an unrelated model in it
        fr.train(config_lib.load(cv_dir / "config.yaml"))
    assert not (cv_dir / "backup").exists() and not (cv_dir / "model.keras").exists()
    # the hint's own command finishes it
    command = json.loads((cv_dir / "kind.json").read_text())["command"].split()
    assert command[:4] == ["python", "-m", "fracture", "cv"]
    assert main(command[3:]) == 0
    assert resume.is_complete(cv_dir) and (cv_dir / "cv.json").is_file()
    caplog.clear()
    fr.find_run(runs_dir=cfg.runs_dir)
    assert "cvx" not in " ".join(r.getMessage() for r in caplog.records)  # no "incomplete" warning any more


def test_ensemble_lifecycle_interrupted_resumes_complete_refused_force_replaces(trained_run, tmp_path,
                                                                               monkeypatch, capsys):
    twin = tmp_path / "members" / "tiny-copy"
    shutil.copytree(trained_run, twin)
    args = ["ensemble", "--runs", str(trained_run), str(twin), "--name", "ens", "--runs-dir", str(tmp_path),
            "--threshold", "0.5"]

    real_plots = plots.save_plots

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(plots, "save_plots", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(args)
    monkeypatch.setattr(plots, "save_plots", real_plots)
    out_dir = tmp_path / "ens"
    assert not resume.is_complete(out_dir)
    hint = resume.resume_hint(out_dir)
    assert "fracture ensemble" in hint and "--name ens" in hint and "fracture train" not in hint, hint
    assert main(args) == 0 and resume.is_complete(out_dir)  # the same command finishes it
    capsys.readouterr()
    assert main(args) == 2 and "--force" in one_error_line(capsys.readouterr().err)
    (out_dir / "stale.txt").write_text("from before")
    assert main([*args, "--force"]) == 0 and not (out_dir / "stale.txt").exists() and resume.is_complete(out_dir)


# --------------------------------------------------------------------------------------------
# 7. portable run folders
# --------------------------------------------------------------------------------------------
def test_a_moved_run_folder_finds_its_data_or_says_which_override_to_give(trained_run, synth_root, tmp_path,
                                                                         monkeypatch, capsys):
    lab = tmp_path / "labA"
    shutil.copytree(synth_root, lab / "data" / "MURA-v1.1")
    run_dir = lab / "saved_models" / "tiny"
    shutil.copytree(trained_run, run_dir)
    stored = config_lib.load(run_dir / "config.yaml", stored=True)
    config_lib.dataclasses.replace(stored, data_dir="data/MURA-v1.1", runs_dir="saved_models",
                                   cache_dir="data/processed").to_yaml(run_dir / "config.yaml")
    moved = tmp_path / "elsewhere" / "labB"
    moved.parent.mkdir()
    lab.rename(moved)
    monkeypatch.chdir(tmp_path)  # neither lab: relative paths must not be read from here
    run_dir = moved / "saved_models" / "tiny"
    assert main(["evaluate", "--run", str(run_dir), "--split", "val"]) == 0, capsys.readouterr().err
    assert "val split" in capsys.readouterr().out
    data_now = tmp_path / "data-now"
    (moved / "data").rename(data_now)
    code = main(["evaluate", "--run", str(run_dir), "--split", "val"])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and "data_dir=" in line and "Stanford" not in line, line
    assert main(["evaluate", "--run", str(run_dir), "--split", "val", f"data_dir={data_now / 'MURA-v1.1'}"]) == 0
    code = main(["cam", f"data_dir={data_now / 'MURA-v1.1'}", "--run", str(run_dir), "--limit", "1",
                 "--out", str(tmp_path / "cams")])
    assert code == 0, capsys.readouterr().err
    assert list((tmp_path / "cams").rglob("panel.png"))


def test_a_copied_run_folder_does_not_write_into_the_original_mlflow_run(tmp_path, monkeypatch, caplog):
    original, copy = tmp_path / "a" / "run", tmp_path / "b" / "run"
    original.mkdir(parents=True)
    tracking.write_run_id(original, "abc123", f"sqlite:///{tmp_path / 'mlflow.db'}")
    shutil.copytree(original, copy)
    calls = []
    assert tracking._on_recorded_run(original, "x", lambda client, run_id: calls.append(run_id))
    assert calls == ["abc123"]
    assert not tracking._on_recorded_run(copy, "the test metrics", lambda client, run_id: calls.append(run_id))
    assert calls == ["abc123"] and "--mlflow-run" in caplog.text
    assert tracking._on_recorded_run(copy, "x", lambda client, run_id: calls.append(run_id), "recorded")
    assert tracking._on_recorded_run(copy, "x", lambda client, run_id: calls.append(run_id), "other9")
    assert calls == ["abc123", "abc123", "other9"]


def test_panel_boxes_are_found_however_the_dataset_images_are_named(synth_root, tmp_path):
    from fracture.cam.metrics import boxes_by_path

    boxes = boxes_by_path(config_lib.load(overrides={"data_dir": str(synth_root)}))
    copy = tmp_path / "copy" / "MURA-v1.1"
    shutil.copytree(synth_root, copy)
    link = tmp_path / "link"
    link.symlink_to(copy)
    table = fr.load_boxes(synth_root)
    original = Path(table["path"].iloc[0])
    expected = tuple(table.iloc[0][["x0", "y0", "x1", "y1"]])
    relative = original.relative_to(synth_root)
    for name in (copy / relative, link / relative, Path(os.path.relpath(copy / relative))):
        assert boxes.get(str(Path(name).resolve())) == expected, name


# --------------------------------------------------------------------------------------------
# 8. a production server by default
# --------------------------------------------------------------------------------------------
def test_serve_is_gunicorn_and_cuts_off_a_stalled_request(trained_run, tmp_path):
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "fracture", "serve", "--run", str(trained_run), "--host",
                               "127.0.0.1", "--port", str(port), "--request-timeout", "2", "--threads", "2"],
                              cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 420  # model load and warm-up; slow on a busy 2-core machine
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    reply = s.recv(4096).decode("latin-1")
                if " 200 " in reply.splitlines()[0]:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "server did not start"
            time.sleep(1)
        assert "server: gunicorn" in reply.lower(), reply
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                      b"Content-Length: 10485760\r\n\r\n" + b"--b\r\n" + b"x" * 195)
            started = time.monotonic()
            answer = b""
            while chunk := s.recv(4096):
                answer += chunk
            held = time.monotonic() - started
        assert held < 15, f"a stalled request was held {held:.0f} s"
        assert not answer or b" 408 " in answer.split(b"\r\n")[0], answer[:200]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:  # the server still answers
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert b" 200 " in s.recv(4096).split(b"\r\n")[0]
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def test_a_small_body_of_many_parts_is_not_called_too_large(trained_run):
    from fracture.app import create_app

    app = create_app(trained_run, warm_up=False)
    body = b"".join(b"--b\r\nContent-Disposition: form-data; name=\"f%d\"\r\n\r\nx\r\n" % i for i in range(100_000))
    body += b"--b--\r\n"
    assert len(body) < 20 * 1024 * 1024
    reply = app.test_client().post("/api/predict", data=body, content_type="multipart/form-data; boundary=b")
    assert reply.status_code == 413
    message = reply.get_json()["message"]
    assert "parts" in message and "larger than" not in message, message


# --------------------------------------------------------------------------------------------
# 9. shared-lab file modes
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("umask,expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_honour_the_umask_like_ordinary_writes(tmp_path, umask, expected):
    old = os.umask(umask)
    try:
        fileio.atomic_write_text(tmp_path / "metrics.json", "{}")
        (tmp_path / "plain.txt").write_text("x")  # the reference: an ordinary write
        with fileio.atomic_path(tmp_path / "model.keras") as tmp:
            tmp.write_bytes(b"m")
    finally:
        os.umask(old)
    plain = stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    assert plain == expected
    for name in ("metrics.json", "model.keras"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == plain, name


def test_an_atomic_rewrite_keeps_the_mode_the_owner_gave_the_file(tmp_path):
    target = tmp_path / "config.yaml"
    target.write_text("a: 1\n")
    target.chmod(0o640)
    fileio.atomic_write_text(target, "a: 2\n")
    assert stat.S_IMODE(target.stat().st_mode) == 0o640 and target.read_text() == "a: 2\n"
