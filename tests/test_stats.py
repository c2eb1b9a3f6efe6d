"""Bootstrap intervals and the validation threshold against independent computations: scikit-learn
on explicitly materialised resamples, scipy.stats.bootstrap, and ROC points worked out by hand."""

import time

import numpy as np
import pandas as pd
import pytest
from scipy.stats import bootstrap
from sklearn.metrics import accuracy_score, cohen_kappa_score, recall_score, roc_auc_score

from fracture import stats
from fracture.evaluation import format_table, score_frame


def patients_table(n_patients=60, seed=0):
    """Patients of 1-2 studies of 1-3 images; probabilities informative but noisy (with ties)."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        for s in range(rng.integers(1, 3)):
            label = int(rng.random() < 0.45)
            for _ in range(rng.integers(1, 4)):
                rows.append((f"p{p}", f"p{p}/s{s}", label, round(float(np.clip(rng.normal(0.35 + 0.3 * label, 0.2), 0, 1)), 2)))
    return pd.DataFrame(rows, columns=["patient", "study", "label", "probability"])


def test_each_resample_equals_sklearn_on_the_resample_written_out():
    """The vectorised weighted statistics against scikit-learn on the same resample as a real table
    (rows repeated as often as their patient was drawn)."""
    frame = patients_table()
    weights = stats.cluster_weights(frame["patient"], 20, np.random.default_rng(1))
    # Images of one patient move together: equal multiplicity within a patient.
    for row in weights:
        assert frame.assign(w=row).groupby("patient")["w"].nunique().eq(1).all()
    got = stats.weighted_statistics(frame["label"], frame["probability"], 0.5, weights)
    for r, row in enumerate(weights):
        drawn = frame.loc[frame.index.repeat(row.astype(int))]
        y, p = drawn["label"].to_numpy(), drawn["probability"].to_numpy()
        predicted = (p > 0.5).astype(int)
        assert got["auc"][r] == pytest.approx(roc_auc_score(y, p))
        assert got["kappa"][r] == pytest.approx(cohen_kappa_score(y, predicted))
        assert got["sensitivity"][r] == pytest.approx(recall_score(y, predicted))
        assert got["specificity"][r] == pytest.approx(recall_score(y, predicted, pos_label=0))
        assert got["accuracy"][r] == pytest.approx(accuracy_score(y, predicted))


def test_a_resample_without_both_classes_has_no_auc():
    got = stats.weighted_statistics([1, 0, 1], [0.9, 0.2, 0.4], 0.5, [[1, 0, 2], [1, 1, 1]])
    assert np.isnan(got["auc"][0]) and np.isnan(got["kappa"][0]) and got["accuracy"][0] == pytest.approx(1 / 3)
    assert got["auc"][1] == pytest.approx(1.0)


def test_percentile_interval_agrees_with_scipy_bootstrap():
    """Independent items (each its own cluster): our interval of accuracy against scipy's percentile
    bootstrap of the mean of `correct`. Different random draws, so agreement within Monte Carlo noise."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    probabilities = np.clip(0.5 + (labels - 0.5) * 0.4 + rng.normal(0, 0.3, 400), 0, 1)
    ours = stats.bootstrap_intervals(labels, probabilities, 0.5, resamples=4000, seed=1)
    correct = ((probabilities > 0.5) == labels).astype(float)
    theirs = bootstrap((correct,), np.mean, n_resamples=4000, method="percentile", random_state=2).confidence_interval
    np.testing.assert_allclose(ours["accuracy_ci"], [theirs.low, theirs.high], atol=0.01)
    assert ours["accuracy_ci"][0] < correct.mean() < ours["accuracy_ci"][1]
    # AUC: against scipy resampling (label, probability) pairs and calling scikit-learn.
    theirs = bootstrap((labels, probabilities), lambda y, p: roc_auc_score(y, p), paired=True, vectorized=False,
                       n_resamples=1000, method="percentile", random_state=3).confidence_interval
    np.testing.assert_allclose(ours["auc_ci"], [theirs.low, theirs.high], atol=0.015)


def test_cluster_resampling_widens_the_interval_of_correlated_images():
    """Ten identical images per patient: resampling images pretends 10x the data; patients do not."""
    rng = np.random.default_rng(0)
    labels = np.repeat(rng.integers(0, 2, 60), 10)
    probabilities = np.repeat(rng.random(60), 10)
    patients = np.repeat(np.arange(60), 10)
    by_image = stats.bootstrap_intervals(labels, probabilities, 0.5, resamples=1000)
    by_patient = stats.bootstrap_intervals(labels, probabilities, 0.5, clusters=patients, resamples=1000)
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    assert width(by_patient["auc_ci"]) > 2 * width(by_image["auc_ci"])


def test_intervals_are_seeded_and_fast():
    frame = patients_table(300)
    start = time.perf_counter()
    first = score_frame(frame, 0.5, resamples=2000, seed=7)
    assert time.perf_counter() - start < 5  # ~0.3 s on 2 shared cores; generous for a busy machine
    assert first == score_frame(frame, 0.5, resamples=2000, seed=7)
    assert first["study"]["auc_ci"] != score_frame(frame, 0.5, resamples=2000, seed=8)["study"]["auc_ci"]
    for level in ("image", "study"):
        for key in stats.STATISTICS:
            low, high = first[level][f"{key}_ci"]
            assert low <= first[level][key] <= high, (level, key)


def test_a_small_split_says_it_is_too_small():
    frame = patients_table(12)
    scores = score_frame(frame, 0.5, resamples=2000)
    for level in ("image", "study"):
        assert all(scores[level][f"{key}_ci"] is None for key in stats.STATISTICS)
        assert "too small for a confidence interval" in scores[level]["ci_note"]
        assert "at least 10 of each" in scores[level]["ci_note"]
    table = format_table(scores)
    assert "study: too small for a confidence interval" in table and "\u2013" not in table


def test_table_prints_point_and_interval():
    scores = score_frame(patients_table(200), 0.5, resamples=500)
    line = next(row for row in format_table(scores).splitlines() if row.startswith("study"))
    auc, (low, high) = scores["study"]["auc"], scores["study"]["auc_ci"]
    assert f"{auc:.2f} ({low:.2f}\u2013{high:.2f})" in line
    assert "500 resamples of patients" in format_table(scores)


def test_no_resamples_no_interval_keys():
    assert "auc_ci" not in score_frame(patients_table(), 0.5)["study"]


@pytest.mark.parametrize("target, expected", [
    # scores 0.1 0.3 0.35 0.4 0.6 0.8 0.9 with labels 0 0 1 0 1 1 1.
    # Youden: calling >= 0.6 abnormal gives sens 3/4, spec 3/3 (J 0.75); >= 0.35 gives 4/4, 2/3 (J 0.67).
    (0.0, (0.5, 3 / 4, 1.0)),  # halfway between 0.6 and 0.4
    (1.0, (0.325, 1.0, 2 / 3)),  # all four positives need >= 0.35: halfway to 0.3
])
def test_threshold_choice_by_hand(target, expected):
    labels = [0, 0, 1, 0, 1, 1, 1]
    probabilities = [0.1, 0.3, 0.35, 0.4, 0.6, 0.8, 0.9]
    threshold, rule = stats.choose_threshold(labels, probabilities, target)
    assert threshold == pytest.approx(expected[0])
    predicted = (np.array(probabilities) > threshold).astype(int)
    assert recall_score(labels, predicted) == pytest.approx(expected[1])
    assert recall_score(labels, predicted, pos_label=0) == pytest.approx(expected[2])
    assert ("Youden" in rule) == (target == 0)


def test_threshold_needs_both_classes():
    with pytest.raises(ValueError, match="both classes"):
        stats.choose_threshold([1, 1], [0.2, 0.9])
