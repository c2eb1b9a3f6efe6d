"""A real (tiny) training run: every run-folder file, round trip, resume guard, class weights."""

import json

import keras
import numpy as np
import pandas as pd
import pytest

import fracture as fr
from fracture import config
from fracture.errors import FractureError
from fracture.train import class_weights
from tests.conftest import BROKEN, tiny_config

RUN_FILES = ["model.keras", "config.yaml", "history.csv", "metrics.json", "skipped.csv", "predictions_val.csv",
             "predictions_test.csv", "plots/curves.png", "plots/roc.png", "plots/confusion_matrix.png", "complete.json"]


def test_run_folder_is_complete(trained_run):
    for name in RUN_FILES:
        assert (trained_run / name).is_file(), name
    # Training state and temporary files are gone once the run is complete (see fracture/resume.py).
    assert not (trained_run / "backup").exists() and not list(trained_run.glob(".*partial*"))
    history = pd.read_csv(trained_run / "history.csv")
    assert {"epoch", "loss", "auc", "val_loss", "val_auc", "learning_rate"} <= set(history.columns)
    metrics = json.loads((trained_run / "metrics.json").read_text())
    for split in ("val", "test"):
        for level in ("image", "study"):
            assert {"auc", "kappa", "accuracy", "sensitivity", "specificity", "confusion_matrix"} <= set(
                metrics[split][level])
    assert metrics["skipped_files"] == 1 and metrics["trainable_params"] > 0


def test_unreadable_file_is_reported_not_fatal(trained_run):
    skipped = pd.read_csv(trained_run / "skipped.csv")
    assert len(skipped) == 1 and skipped["path"][0].endswith(BROKEN) and skipped["split"][0] in ("train", "val")


def test_config_yaml_is_fully_resolved(trained_run):
    cfg = config.load(trained_run / "config.yaml")
    assert cfg.run_name == "tiny" and cfg.image_size == 32 and cfg.backbone == "DenseNet121"


def test_save_load_round_trip_gives_the_same_predictions(trained_run):
    run = fr.load_run(trained_run)
    stored = pd.read_csv(trained_run / "predictions_test.csv")
    again = fr.predict_paths(run, stored["path"].tolist())
    np.testing.assert_allclose(again["probability"], stored["probability"], atol=1e-5)
    assert set(again["label"]) <= {"normal", "abnormal"}


def test_re_evaluation_matches_stored_metrics(trained_run):
    stored = json.loads((trained_run / "metrics.json").read_text())["test"]
    scores = fr.evaluate(trained_run, write=False)
    for level in ("image", "study"):
        assert scores[level]["confusion_matrix"] == stored[level]["confusion_matrix"]
        assert scores[level]["auc"] == pytest.approx(stored[level]["auc"], abs=1e-6)


def test_a_finished_run_is_not_overwritten(trained_run):
    cfg = config.load(trained_run / "config.yaml")
    with pytest.raises(FractureError, match="already complete"):
        fr.train(cfg)


def test_mura_class_weights_from_study_counts():
    frame = pd.DataFrame({"study": ["a", "a", "b", "c", "d"], "label": [1, 1, 0, 0, 0]})
    # 1 abnormal, 3 normal studies: positives weigh 3/4, negatives 1/4
    assert class_weights(frame) == {1: 0.75, 0: 0.25}


@pytest.mark.backend
def test_train_save_load_on_this_backend(train_data, tmp_path):
    """The batch pipeline, the in-model preprocessing and the .keras round trip on the backend in use."""
    cfg = tiny_config(tmp_path, train_data, run_name=f"tiny-{keras.backend.backend()}", trainable_layers=3)
    run_dir = fr.train(cfg)
    stored = pd.read_csv(run_dir / "predictions_test.csv")
    run = fr.load_run(run_dir)
    again = fr.predict_paths(run, stored["path"].tolist())
    np.testing.assert_allclose(again["probability"], stored["probability"], atol=1e-5)
    assert json.loads((run_dir / "metrics.json").read_text())["counts"]["train"] > 0


@pytest.mark.parametrize("name, momentum, expected", [
    ("sgd", 0.9, dict(momentum=0.9, nesterov=True)),
    ("sgd", 0.0, dict(momentum=0.0, nesterov=False)),
    ("rmsprop", 0.5, dict(momentum=0.5)),
    ("adam", 0.9, dict(beta_1=0.9)),  # momentum is not an Adam setting: ignored
], ids=["sgd-nesterov", "sgd-plain", "rmsprop", "adam"])
def test_optimizer_from_config(name, momentum, expected):
    from fracture.train import compile_model

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, activation="sigmoid")])
    compile_model(model, config.load(overrides=dict(optimizer=name, learning_rate=0.05, momentum=momentum)))
    settings = model.optimizer.get_config()
    assert type(model.optimizer).__name__.lower() == name and settings["learning_rate"] == pytest.approx(0.05)
    assert {key: settings[key] for key in expected} == pytest.approx(expected)
