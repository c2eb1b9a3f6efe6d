"""Shared fixtures: tiny synthetic MURA trees and one tiny trained run per test session.

Everything is CPU-only, downloads nothing, and uses 32-64 px images so the suite stays fast on
2 cores.
"""

import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import fracture as fr  # noqa: E402
from fracture import training  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

HOLDER = r"""
import sys, time
from fracture import runlock
with runlock.hold(sys.argv[1], "train"):
    print("held", flush=True)
    time.sleep(120)
"""


@contextmanager
def lock_holder(run_dir):
    """Another live process holding `run_dir`'s run lock (as a running `train` does) for the block:
    yields its Popen (its PID is what a refusal should name); killed on exit."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


TINY = dict(weights="none", image_size=32, epochs=1, batch_size=8, trainable_layers=-1,
            learning_rate=1e-3, mlflow=False, dense_units=[16, 8, 4])


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """A small synthetic MURA v1.1 tree (shared, read-only for tests)."""
    out = tmp_path_factory.mktemp("synth")
    return fr.generate_synthetic(out, patients=14, seed=3, max_size=96, min_size=64)


def tiny_config(tmp_path, data_dir, **overrides):
    values = dict(TINY, data_dir=str(data_dir), runs_dir=str(tmp_path / "runs"),
                  cache_dir=str(tmp_path / "cache"))
    values.update(overrides)
    # Some tests freeze part of a random backbone on purpose (the freezing, not the learning, is tested).
    return fr.load_config(overrides=values, frozen_random_backbone=True)


BROKEN = "MURA-v1.1/train/XR_HUMERUS/patient00001/study1_broken_negative/image1.png"


@pytest.fixture(scope="session")
def train_data(synth_root, tmp_path_factory):
    """A copy of the synthetic tree with one listed but undecodable image, as real downloads have."""
    root = tmp_path_factory.mktemp("train_data") / "MURA-v1.1"
    shutil.copytree(synth_root, root)
    broken = root.parent / BROKEN
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"\x89PNG truncated download")
    with open(root / "train_image_paths.csv", "a") as csv:
        csv.write(BROKEN + "\n")
    return root


def train_keeping_the_model(cfg, monkeypatch):
    """fr.train(cfg), plus the very model object Keras fitted (caught where train compiles it).

    After training, that object holds the last epoch's weights in memory: they never went through
    model.keras. With epochs=1 the last epoch is the best one, so it is an independent reference for
    what load_run must give back (the predictions train writes come from the reloaded model)."""
    fitted = []
    real_compile = training.compile_model

    def compile_and_keep(model, cfg):
        fitted.append(model)
        return real_compile(model, cfg)

    monkeypatch.setattr(training, "compile_model", compile_and_keep)
    run_dir = fr.train(cfg)
    assert len(fitted) == 1, "train compiled more than one model: which one was fitted?"
    return run_dir, fitted[0]


@pytest.fixture(scope="session")
def trained(train_data, tmp_path_factory):
    """One DenseNet121 trained for an epoch on 32 px images: (run folder, the in-memory fitted model).

    Then, as a user would, its final test evaluation (train itself selects on validation only);
    what train alone wrote is kept for `trained_alone`."""
    import json

    tmp = tmp_path_factory.mktemp("run")
    cfg = tiny_config(tmp, train_data, run_name="tiny")
    with pytest.MonkeyPatch.context() as monkeypatch:
        run_dir, fitted = train_keeping_the_model(cfg, monkeypatch)
    files = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file())
    (tmp / "trained_alone.json").write_text(json.dumps(
        {"files": files, "metrics": json.loads((run_dir / "metrics.json").read_text())}))
    fr.evaluate(run_dir, split="test")
    return run_dir, fitted


@pytest.fixture(scope="session")
def trained_alone(trained):
    """{'files': [...], 'metrics': {...}}: the run folder of `trained` before its test evaluation."""
    import json

    return json.loads((trained[0].parent.parent / "trained_alone.json").read_text())


@pytest.fixture(scope="session")
def trained_run(trained):
    """The run folder of `trained`."""
    return trained[0]


# --------------------------------------------------------------------------------------------
# CAM tests (test_cam.py, test_cam_sanity.py): a tiny net trained on a planted signal, and the
# session run in a folder of its own (Keras imported inside: the other tests' collection skips it)
# --------------------------------------------------------------------------------------------
SIZE, PATCH = 32, 5


def tiny_model():
    import keras

    L = keras.layers
    image = keras.Input((SIZE, SIZE, 1), name="image")
    x = L.Rescaling(1 / 255.0, name="scale")(image)
    early = L.Conv2D(8, 3, padding="same", activation="relu", name="early")(x)
    middle = L.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="middle")(early)
    inner = L.Conv2D(8, 3, padding="same", activation="relu", name="inner")(middle)
    block = L.Add(name="skip")([middle, L.Conv2D(8, 3, padding="same", name="inner_out")(inner)])
    block = L.ReLU(name="block")(block)
    last = L.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="last")(block)
    logit = L.Dense(1, name="logit")(L.GlobalAveragePooling2D(name="pool")(last))
    return keras.Model(image, L.Activation("sigmoid", name="probability")(logit))


def planted_images(n, seed):
    """Dim noise; every odd image (label 1) carries one bright 5x5 patch at a random place.
    Returns images, labels and the patch boxes (x0, y0, x1, y1), drawn for negatives too."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 60, (n, SIZE, SIZE, 1)).astype(np.float32)
    y = (np.arange(n) % 2 == 0).astype(np.float32)
    boxes = np.zeros((n, 4), int)
    for i in range(n):
        r, c = rng.integers(1, SIZE - PATCH - 1, 2)
        boxes[i] = c, r, c + PATCH, r + PATCH
        if y[i]:
            x[i, r:r + PATCH, c:c + PATCH] = rng.uniform(200, 255)
    return np.round(x), y, boxes  # whole pixel values, as decoded images have


@pytest.fixture(scope="module")
def planted():
    """The tiny net trained until it detects the patch: (model, test images, labels, boxes)."""
    import keras

    keras.utils.set_random_seed(0)
    model = tiny_model()
    # lr 3e-3 x 12 epochs learned for each of 6 seeds tried (1e-2 left 2 of 6 nets dead).
    model.compile(keras.optimizers.Adam(3e-3), "binary_crossentropy", metrics=["accuracy"])
    x, y, _ = planted_images(128, seed=0)
    model.fit(x, y, epochs=12, batch_size=16, verbose=0)
    xt, yt, bt = planted_images(6, seed=1)  # test order: pos, neg, pos, neg, pos, neg
    accuracy = np.mean((model.predict(xt, verbose=0)[:, 0] > 0.5) == yt)
    assert accuracy == 1.0, f"the planted-signal net did not learn on {keras.backend.backend()}"
    return model, xt, yt, bt


def positives(planted):
    model, x, y, boxes = planted
    return model, x[y == 1], boxes[y == 1]


@pytest.fixture(scope="module")
def run_copy(trained_run, tmp_path_factory):
    """The session run in a folder of its own (files written here do not leak into other tests),
    loaded once so the tests below share its compiled CAM functions."""
    from fracture.runs import load_run

    folder = tmp_path_factory.mktemp("cam_run") / "tiny"
    folder.mkdir()
    for name in ("model.keras", "config.yaml", "complete.json"):
        shutil.copy(trained_run / name, folder / name)
    return load_run(folder)
