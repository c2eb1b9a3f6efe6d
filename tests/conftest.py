"""Shared fixtures: tiny synthetic MURA trees and one tiny trained run per test session.

Everything is CPU-only, downloads nothing, and uses 32-64 px images so the suite stays fast on
2 cores.
"""

import os
import shutil

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

import fracture as fr  # noqa: E402

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
    import importlib

    train_module = importlib.import_module("fracture.train")  # fr.train, the attribute, is the function
    fitted = []
    real_compile = train_module.compile_model

    def compile_and_keep(model, cfg):
        fitted.append(model)
        return real_compile(model, cfg)

    monkeypatch.setattr(train_module, "compile_model", compile_and_keep)
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
