"""Patient-level cross-validation: the summary against scikit-learn on hand-made fold predictions,
the mistakes cv refuses before training, and one tiny 2-fold cv end to end (fold runs, cv.json,
MLflow parent with child runs, a rerun that skips the complete folds)."""

import json

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from sklearn.metrics import cohen_kappa_score, roc_auc_score

import fracture as fr
from fracture import cv, tracking, training
from fracture.cli import main
from fracture.errors import ConfigError, DataError, FractureError
from tests.conftest import tiny_config


def write_folds(tmp_path, n_folds=3, seed=0) -> list:
    """Run folders holding only predictions_val.csv: 5 studies of 1-3 images per fold."""
    rng = np.random.default_rng(seed)
    dirs = []
    for k in range(n_folds):
        rows = []
        for s in range(5):
            label = int(s % 2 == 0)
            for i in range(rng.integers(1, 4)):
                rows.append(dict(path=f"/d/f{k}/s{s}/img{i}.png", label=label, patient=f"f{k}p{s}",
                                 study=f"f{k}/s{s}/", probability=float(np.clip(0.3 * label + rng.random() * 0.7, 0, 1))))
        run_dir = tmp_path / f"x-fold{k}"
        run_dir.mkdir()
        pd.DataFrame(rows).to_csv(run_dir / "predictions_val.csv", index=False)
        dirs.append(run_dir)
    return dirs


def test_summary_scores_each_fold_and_the_pooled_predictions_like_sklearn(tmp_path):
    dirs = write_folds(tmp_path)
    summary, oof = cv.summarize(dirs, threshold=0.5)
    parts = [pd.read_csv(d / "predictions_val.csv") for d in dirs]
    image_auc = [roc_auc_score(p["label"], p["probability"]) for p in parts]
    assert summary["mean"]["image"]["auc"] == pytest.approx(np.mean(image_auc))
    assert summary["sd"]["image"]["auc"] == pytest.approx(np.std(image_auc, ddof=1))
    kappas = [cohen_kappa_score(p["label"], p["probability"] > 0.5) for p in parts]
    assert summary["mean"]["image"]["kappa"] == pytest.approx(np.mean(kappas))
    pooled = pd.concat(parts)
    assert summary["pooled"]["image"]["auc"] == pytest.approx(roc_auc_score(pooled["label"], pooled["probability"]))
    studies = pooled.groupby("study").agg(label=("label", "first"), probability=("probability", "mean"))
    assert summary["pooled"]["study"]["auc"] == pytest.approx(roc_auc_score(studies["label"], studies["probability"]))
    assert summary["pooled"]["study"]["n"] == 15 and summary["pooled"]["image"]["n"] == len(pooled)
    assert oof["fold"].tolist() == [k for k, p in enumerate(parts) for _ in range(len(p))]
    assert [f["run"] for f in summary["per_fold"]] == ["x-fold0", "x-fold1", "x-fold2"]
    text = cv.format_summary(summary)
    assert f"{np.mean(image_auc):.3f} ± {np.std(image_auc, ddof=1):.3f}" in text and "pooled OOF" in text


def test_summary_refuses_folds_that_share_an_image(tmp_path):
    dirs = write_folds(tmp_path, n_folds=2)
    (dirs[1] / "predictions_val.csv").write_text((dirs[0] / "predictions_val.csv").read_text())
    with pytest.raises(FractureError, match="validation split of two folds"):
        cv.summarize(dirs, 0.5)


def test_cv_refuses_a_fold_and_too_many_folds_before_training(train_data, tmp_path, capsys):
    with pytest.raises(ConfigError, match="drop fold=1"):
        cv.cross_validate(tiny_config(tmp_path, train_data, fold=1))
    with pytest.raises(ConfigError, match="threshold=auto would choose the threshold on the data it reports"):
        cv.cross_validate(tiny_config(tmp_path, train_data, threshold="auto"))
    with pytest.raises(DataError, match="cannot fill 40 patient folds"):
        cv.cross_validate(tiny_config(tmp_path, train_data, folds=40, run_name="many"))
    assert not (tmp_path / "runs").exists()  # nothing written, nothing trained
    assert main(["cv", "folds=1"]) == 2 and "folds must be at least 2" in capsys.readouterr().err


def test_a_resumed_cv_with_other_settings_is_refused_before_its_config_is_rewritten(train_data, tmp_path):
    """Complete folds are skipped on a rerun, so a rerun with another learning rate would pool folds
    of two trainings: it is refused naming the key, and the stored config stays as it was."""
    import dataclasses

    from fracture import runkind

    cfg = tiny_config(tmp_path, train_data, folds=2, run_name="cvre")
    cv_dir = tmp_path / "runs" / "cvre"
    cv_dir.mkdir(parents=True)
    cfg.to_yaml(cv_dir / "config.yaml")
    runkind.write(cv_dir, "cv", ["python", "-m", "fracture", "cv"])
    stored = (cv_dir / "config.yaml").read_bytes()
    with pytest.raises(ConfigError, match=r"learning_rate: .* \(stored\) != .* \(now\)"):
        cv.cross_validate(dataclasses.replace(cfg, learning_rate=cfg.learning_rate / 2))
    assert (cv_dir / "config.yaml").read_bytes() == stored
    assert not (tmp_path / "runs" / "cvre-fold0").exists()  # no fold was trained


@pytest.mark.slow
def test_two_fold_cv_end_to_end_with_mlflow_parent_and_children(train_data, tmp_path, monkeypatch, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    cfg = tiny_config(tmp_path, train_data, mlflow=True, backbone="VGG16", folds=2, run_name="cvtiny")
    overrides = [f"{k}={v if not isinstance(v, list) else ','.join(map(str, v))}" for k, v in cfg.to_dict().items()
                 if v != fr.Config().to_dict()[k]]
    assert main(["cv", *overrides]) == 0
    out = capsys.readouterr().out
    runs = tmp_path / "runs"
    summary = json.loads((runs / "cvtiny" / "cv.json").read_text())
    oof = pd.read_csv(runs / "cvtiny" / "oof_predictions.csv")

    # Every non-test readable image is held out exactly once, by the fold whose run predicted it.
    index = fr.load_index(cfg)
    readable = index[index["split"] != "test"]
    readable = readable[~readable["path"].str.contains("broken")]
    assert sorted(oof["path"]) == sorted(readable["path"])
    for k in range(2):
        fold_run = runs / f"cvtiny-fold{k}"
        assert fr.load_run(fold_run).config.fold == k
        stored = json.loads((fold_run / "metrics.json").read_text())["val"]["image"]["auc"]
        assert summary["per_fold"][k]["val"]["image"]["auc"] == pytest.approx(stored, nan_ok=True)
    assert not set(oof.loc[oof["fold"] == 0, "patient"]) & set(oof.loc[oof["fold"] == 1, "patient"])
    assert summary["pooled"]["image"]["auc"] == pytest.approx(roc_auc_score(oof["label"], oof["probability"]))
    assert "pooled OOF" in out and "cv.json" in out

    client = MlflowClient(uri)
    parent_id = tracking.read_run_id(runs / "cvtiny")[0]
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.info.run_name == "cvtiny"
    assert parent.data.metrics["oof_image_auc"] == pytest.approx(summary["pooled"]["image"]["auc"])
    assert {"cv.json", "oof_predictions.csv"} <= {f.path for f in client.list_artifacts(parent_id)}
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    assert sorted(r.info.run_name for r in children) == ["cvtiny-fold0", "cvtiny-fold1"]
    assert {r.data.params["fold"] for r in children} == {"0", "1"}

    # A rerun trains nothing (both folds are complete) and reopens the same parent run.
    def no_training(cfg):
        raise AssertionError(f"trained {cfg.run_name} again")

    monkeypatch.setattr(training, "train", no_training)
    cv_dir, again = cv.cross_validate(cfg)
    assert json.dumps(again, default=float) == json.dumps(summary)
    assert tracking.read_run_id(cv_dir)[0] == parent_id
