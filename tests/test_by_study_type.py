"""MURA's per-study-type table: `by_study_type` in the scores of a split that holds several types,
each type scored on its own rows exactly as the pooled table is, and printed by `evaluate` in the
layout of the MURA paper's Table 2."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score, roc_auc_score

import fracture as fr
from fracture.cli import main
from fracture.evaluation import format_study_type_table, score_frame


def _frame(seed=0):
    """Two study types, 40 patients each with one 2-image study; a noisy but informative model."""
    rng = np.random.default_rng(seed)
    rows = []
    for t, skill in (("XR_HUMERUS", 1.5), ("XR_WRIST", 0.5)):
        for p in range(40):
            label = p % 2
            for image in range(2):
                rows.append(dict(patient=f"{t}{p}", study=f"{t}/{p}/study1", study_type=t, label=label,
                                 probability=float(1 / (1 + np.exp(-(skill * (2 * label - 1) + rng.normal()))))))
    return pd.DataFrame(rows)


def test_each_type_is_scored_on_its_own_rows():
    frame = _frame()
    scores = score_frame(frame, 0.5, resamples=200, seed=1)
    assert set(scores["by_study_type"]) == {"XR_HUMERUS", "XR_WRIST"}
    for t, part in frame.groupby("study_type"):
        studies = part.groupby("study").agg(label=("label", "max"), p=("probability", "mean"))
        study = scores["by_study_type"][t]["study"]
        assert study["n"] == 40 and study["kappa"] == pytest.approx(
            cohen_kappa_score(studies["label"], (studies["p"] > 0.5).astype(int)))
        assert study["auc"] == pytest.approx(roc_auc_score(studies["label"], studies["p"]))
        image = scores["by_study_type"][t]["image"]
        assert image["n"] == 80 and image["auc"] == pytest.approx(roc_auc_score(part["label"], part["probability"]))
        for level in ("image", "study"):  # every metric with its interval
            m = scores["by_study_type"][t][level]
            assert all(m[f"{k}_ci"] is not None for k in ("auc", "kappa", "sensitivity", "specificity", "accuracy"))
    # one type alone: no breakdown (it would repeat the pooled table)
    assert "by_study_type" not in score_frame(frame[frame["study_type"] == "XR_WRIST"], 0.5)


def test_table_2_layout():
    scores = score_frame(_frame(), 0.5, resamples=200, seed=1)
    lines = format_study_type_table(scores).splitlines()
    assert lines[0].split()[:2] == ["study", "type"] and "paper model kappa" in lines[0]
    assert [line.split()[0] for line in lines[1:4]] == ["Humerus", "Wrist", "Overall"]  # the paper's order
    k, (lo, hi) = scores["study"]["kappa"], scores["study"]["kappa_ci"]
    assert f"{k:.3f} ({lo:.3f}, {hi:.3f})" in lines[3]
    # the paper's model kappa beside ours, typed here from the quotations of its Table 2 (docs/data.md)
    assert [line.split()[-1] for line in lines[1:4]] == ["0.600", "0.931", "0.705"]
    assert format_study_type_table(score_frame(_frame()[lambda f: f["study_type"] == "XR_WRIST"], 0.5)) == ""


def test_evaluate_prints_and_stores_the_table(trained_run, tmp_path, capsys):
    """A run re-evaluated on a two-type synthetic set (`synth --study-types`)."""
    data_dir = fr.generate_synthetic(tmp_path / "data", patients=40, seed=8, max_size=64, min_size=48,
                                     study_types=("XR_HUMERUS", "XR_WRIST"))
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    assert main(["evaluate", "--run", str(run), "--split", "test", f"data_dir={data_dir}", "study_type=all",
                 f"cache_dir={tmp_path / 'cache'}", "bootstrap_resamples=50"]) == 0
    out = capsys.readouterr().out
    assert "in the layout of the MURA paper's Table 2" in out
    stored = json.loads((run / "metrics.json").read_text())["test"]["by_study_type"]
    predictions = pd.read_csv(run / "predictions_test.csv")
    for t in ("XR_HUMERUS", "XR_WRIST"):
        part = predictions[predictions["study_type"] == t]
        assert stored[t]["image"]["n"] == len(part)
        assert stored[t]["image"]["auc"] == pytest.approx(roc_auc_score(part["label"], part["probability"]))
        assert f"{t.removeprefix('XR_').capitalize()} " in out
