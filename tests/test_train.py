"""A real (tiny) training run: every run-folder file, round trip, resume guard, class weights."""

import json

import keras
import numpy as np
import pandas as pd
import pytest

import fracture as fr
from fracture import config
from fracture.errors import FractureError
from fracture.model import build_model
from fracture.training import class_weights
from tests.conftest import BROKEN, tiny_config, train_keeping_the_model

RUN_FILES = ["model.keras", "config.yaml", "history.csv", "metrics.json", "skipped.csv", "predictions_val.csv",
             "predictions_test.csv", "plots/curves.png", "plots/val/roc.png", "plots/val/confusion_matrix.png",
             "plots/val/precision_recall.png", "plots/val/calibration.png", "plots/test/roc.png", "complete.json"]


def test_train_selects_on_validation_and_leaves_test_alone(trained_alone):
    """train writes val scores (with intervals) and the threshold; the test split stays unseen."""
    assert set(RUN_FILES) - set(trained_alone["files"]) == {"predictions_test.csv", "plots/test/roc.png"}
    metrics = trained_alone["metrics"]
    assert "test" not in metrics and metrics["threshold"] == 0.5 and metrics["threshold_rule"] == "fixed by the config"
    assert set(metrics["val"]["study"]) >= {"auc_ci", "kappa_ci", "sensitivity_ci", "specificity_ci", "accuracy_ci"}


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
    assert metrics["test"]["final"] is True and metrics["test"]["evaluations"] >= 1
    assert metrics["skipped_files"] == 1 and metrics["trainable_params"] > 0


def test_unreadable_file_is_reported_not_fatal(trained_run):
    skipped = pd.read_csv(trained_run / "skipped.csv")
    assert len(skipped) == 1 and skipped["path"][0].endswith(BROKEN) and skipped["split"][0] in ("train", "val")


def test_config_yaml_is_fully_resolved(trained_run):
    cfg = config.load(trained_run / "config.yaml")
    assert cfg.run_name == "tiny" and cfg.image_size == 32 and cfg.backbone == "DenseNet121"


def assert_reload_predicts_like_the_fitted_model(run_dir, fitted, resolving_power_check=True):
    """What is independent here: `fitted` is the model object Keras trained, its weights still in
    memory; it never went through a .keras file. The side under test is everything from the best-epoch
    checkpoint to `fr.load_run` (save, copy to model.keras, deserialize, custom layers, weights).
    Both sides go through the same decoder (predict_paths), which is not what this test is about."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # The premise: the last epoch (what `fitted` holds) is the best one (what model.keras holds).
    assert metrics["best_epoch"] == metrics["epochs_run"] == 1
    stored = pd.read_csv(run_dir / "predictions_val.csv")  # what train scored (test waits for evaluate)
    paths = stored["path"].tolist()
    reference = fr.predict_paths(fitted, paths)["probability"].to_numpy()
    run = fr.load_run(run_dir)
    assert run.model is not fitted
    again = fr.predict_paths(run, paths)
    np.testing.assert_allclose(again["probability"], reference, atol=1e-5)
    # train scored the val split with the reloaded model: that must also be the fitted model's answer.
    np.testing.assert_allclose(stored["probability"], reference, atol=1e-5)
    assert set(again["label"]) <= {"normal", "abnormal"}
    if not resolving_power_check:  # (once is enough: it costs a model build and a compile)
        return
    # Resolving power: an untrained model of the same architecture answers measurably differently.
    keras.utils.set_random_seed(1)
    untrained = fr.predict_paths(build_model(run.config), paths)["probability"].to_numpy()
    assert np.abs(untrained - reference).max() > 1e-3


def test_reloaded_model_predicts_like_the_model_keras_trained(trained):
    assert_reload_predicts_like_the_fitted_model(*trained)


def sklearn_scores(frame: pd.DataFrame, threshold: float) -> dict:
    """Image and study scores from scikit-learn called directly; the study mean is taken by hand
    (a plain loop, not fracture.scores.study_level)."""
    from sklearn.metrics import cohen_kappa_score, confusion_matrix, recall_score, roc_auc_score

    studies = {}
    for study, label, probability in zip(frame["study"], frame["label"], frame["probability"]):
        studies.setdefault(study, (int(label), []))[1].append(float(probability))
    levels = {"image": (frame["label"].to_numpy().astype(int), frame["probability"].to_numpy()),
              "study": (np.array([label for label, _ in studies.values()]),
                        np.array([sum(ps) / len(ps) for _, ps in studies.values()]))}
    scores = {}
    for level, (labels, probabilities) in levels.items():
        predicted = (probabilities > threshold).astype(int)
        scores[level] = {"n": len(labels), "auc": roc_auc_score(labels, probabilities),
                         "kappa": cohen_kappa_score(labels, predicted),
                         "sensitivity": recall_score(labels, predicted, pos_label=1, zero_division=0),
                         "specificity": recall_score(labels, predicted, pos_label=0, zero_division=0),
                         "confusion_matrix": confusion_matrix(labels, predicted, labels=[0, 1]).tolist()}
    return scores


def assert_scores_match(scores: dict, expected: dict):
    for level in ("image", "study"):
        assert scores[level]["n"] == expected[level]["n"], level
        assert scores[level]["confusion_matrix"] == expected[level]["confusion_matrix"], level
        for key in ("auc", "kappa", "sensitivity", "specificity"):
            assert scores[level][key] == pytest.approx(expected[level][key], abs=1e-6), (level, key)


def test_stored_and_re_evaluated_metrics_equal_sklearn_on_the_predictions_table(trained_run):
    """metrics.json and a fresh `fr.evaluate` (which re-decodes, re-predicts and re-aggregates)
    against scikit-learn run directly on predictions_test.csv, studies averaged by hand."""
    table = pd.read_csv(trained_run / "predictions_test.csv")
    assert set(table["label"]) == {0, 1}  # both classes, or AUC and kappa would be NaN on both sides
    expected = sklearn_scores(table, config.load(trained_run / "config.yaml").threshold)
    assert expected["study"]["n"] < expected["image"]["n"]  # some study has several images
    assert_scores_match(json.loads((trained_run / "metrics.json").read_text())["test"], expected)
    assert_scores_match(fr.evaluate(trained_run, split="test", write=False), expected)


def test_a_finished_run_is_not_overwritten(trained_run):
    cfg = config.load(trained_run / "config.yaml")
    with pytest.raises(FractureError, match="already complete"):
        fr.train(cfg)


def test_mura_class_weights_from_study_counts():
    frame = pd.DataFrame({"study": ["a", "a", "b", "c", "d"], "label": [1, 1, 0, 0, 0]})
    # 1 abnormal, 3 normal studies: positives weigh 3/4, negatives 1/4
    assert class_weights(frame) == {1: 0.75, 0: 0.25}


@pytest.mark.slow  # its own training run (~25 s)
@pytest.mark.backend
def test_train_save_load_on_this_backend(train_data, tmp_path, monkeypatch):
    """The batch pipeline, the in-model preprocessing and the .keras round trip on the backend in use."""
    cfg = tiny_config(tmp_path, train_data, run_name=f"tiny-{keras.backend.backend()}", trainable_layers=3)
    run_dir, fitted = train_keeping_the_model(cfg, monkeypatch)
    assert_reload_predicts_like_the_fitted_model(run_dir, fitted, resolving_power_check=False)
    assert json.loads((run_dir / "metrics.json").read_text())["counts"]["train"] > 0


@pytest.mark.parametrize("name, momentum, expected", [
    ("sgd", 0.9, dict(momentum=0.9, nesterov=True)),
    ("sgd", 0.0, dict(momentum=0.0, nesterov=False)),
    ("rmsprop", 0.5, dict(momentum=0.5)),
], ids=["sgd-nesterov", "sgd-plain", "rmsprop"])
def test_optimizer_from_config(name, momentum, expected):
    from fracture.training import compile_model

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, activation="sigmoid")])
    compile_model(model, config.load(overrides=dict(optimizer=name, learning_rate=0.05, momentum=momentum)))
    settings = model.optimizer.get_config()
    assert type(model.optimizer).__name__.lower() == name and settings["learning_rate"] == pytest.approx(0.05)
    assert {key: settings[key] for key in expected} == pytest.approx(expected)


def test_adam_takes_the_learning_rate_and_ignores_momentum():
    """momentum is an SGD/RMSprop setting: for Adam it must change nothing (not beta_1, say), and the
    optimizer must otherwise be Keras's Adam at the config's learning rate."""
    from fracture.training import compile_model

    settings = []
    for momentum in (0.0, 0.5):
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, activation="sigmoid")])
        compile_model(model, config.load(overrides=dict(optimizer="adam", learning_rate=0.05, momentum=momentum)))
        assert isinstance(model.optimizer, keras.optimizers.Adam)
        settings.append(without_name(model.optimizer.get_config()))
    assert settings[0] == settings[1]
    assert settings[0]["learning_rate"] == pytest.approx(0.05)
    assert settings[0] == without_name(keras.optimizers.Adam(learning_rate=0.05).get_config())


def without_name(settings: dict) -> dict:
    return {key: value for key, value in settings.items() if key != "name"}  # adam, adam_1, ...


def test_threshold_auto_is_chosen_on_validation_studies(trained_run):
    """evaluate with threshold=auto: Youden's J on predictions_val.csv's studies (sklearn, by hand);
    test is then scored with that threshold, never one chosen on test."""
    from sklearn.metrics import roc_curve

    run = fr.load_run(trained_run)
    auto = config.update(run.config, {"threshold": "auto"})
    val = fr.evaluate(run, auto, split="val", write=False)
    table = pd.read_csv(trained_run / "predictions_val.csv")
    studies = table.groupby("study").agg(label=("label", "max"), probability=("probability", "mean"))
    fpr, tpr, _ = roc_curve(studies["label"], studies["probability"])
    predicted = studies["probability"] > val["threshold"]
    positives, negatives = studies["label"] == 1, studies["label"] == 0
    j = (predicted & positives).sum() / positives.sum() + (~predicted & negatives).sum() / negatives.sum() - 1
    assert j == pytest.approx((tpr - fpr).max())
    assert fr.evaluate(run, auto, split="test", write=False)["threshold"] == pytest.approx(val["threshold"])


def test_fit_verbosity_from_config(monkeypatch):
    import sys

    from fracture.config import ConfigError, load
    from fracture.training import fit_verbosity

    assert [fit_verbosity(v) for v in ("0", "1", "2")] == [0, 1, 2]
    assert load(overrides={"verbose": 2}).verbose == "2"
    with pytest.raises(ConfigError, match="verbose must be auto, 0, 1 or 2"):
        load(overrides={"verbose": "loud"})
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    assert fit_verbosity("auto") == 2  # a log file or CI: one line per epoch
    monkeypatch.setitem(sys.modules, "ipykernel", sys)
    assert fit_verbosity("auto") == 1  # a Jupyter kernel: Keras's progress bar
