"""The run's figures: files of the expected size, and what they show checked against numbers
computed here with numpy/pandas (operating points, confusion counts, best epoch)."""

import re

import cv2
import numpy as np
import pandas as pd
import pytest

from fracture import plots


@pytest.fixture
def frame():
    """40 studies of 1-4 images; positives score higher on average, with overlap."""
    rng = np.random.default_rng(7)
    rows = []
    for s in range(40):
        y = s % 3 == 0
        for _ in range(rng.integers(1, 5)):
            rows.append((f"s{s:02d}", int(y), float(np.clip(rng.normal(0.62 if y else 0.4, 0.18), 0, 1))))
    return pd.DataFrame(rows, columns=["study", "label", "probability"])


@pytest.fixture
def history():
    return pd.DataFrame({"epoch": [0, 1, 2, 3], "loss": [0.7, 0.6, 0.55, 0.5], "val_loss": [0.72, 0.66, 0.6, 0.62],
                         "auc": [0.5, 0.6, 0.7, 0.75], "val_auc": [0.52, 0.64, 0.71, 0.69],
                         "accuracy": [0.5, 0.6, 0.66, 0.7], "val_accuracy": [0.5, 0.6, 0.64, 0.63],
                         "learning_rate": [1e-3, 9e-4, 8.1e-4, 7.29e-4]})


def by_study(frame):
    """Study table computed here (not with scores.study_level): mean probability per study."""
    return frame.groupby("study").agg(label=("label", "max"), probability=("probability", "mean"))


def numpy_point(labels, probabilities, threshold):
    y = np.asarray(labels) == 1
    called = np.asarray(probabilities) > threshold
    return (called & y).sum() / y.sum(), (called & ~y).sum() / (~y).sum(), (called & y).sum() / called.sum()


def test_save_plots_writes_every_figure_at_its_size(tmp_path, history, frame):
    written = plots.save_plots(history, frame, None, tmp_path, 0.5, "val", best_epoch=3, dpi=100)
    # width x height in pixels at 100 dpi: the figure sizes in inches, times 100
    expected = {"curves.png": (840, 600), "roc.png": (500, 500), "precision_recall.png": (500, 500),
                "calibration.png": (500, 620), "confusion_matrix.png": (840, 400)}
    assert [p.relative_to(tmp_path).as_posix() for p in written] == [
        "curves.png", *(f"val/{name}" for name in list(expected)[1:])]
    for path in written:
        assert path.stat().st_size > 5000, path.name  # a drawn figure, not an empty canvas
        image = cv2.imread(str(path))
        assert (image.shape[1], image.shape[0]) == expected[path.name], path.name
        assert image.std() > 10, path.name
    assert not list(tmp_path.glob(".*partial*"))  # written through atomic_path, nothing left behind


def test_a_reevaluation_writes_no_curves_and_keeps_its_own_split_folder(tmp_path, history, frame):
    written = plots.save_plots(history, frame, {"image": {}}, tmp_path, 0.5, "test", best_epoch=2)
    assert {p.name for p in written} == {plots.CURVES, *plots.FILES} and all(p.is_file() for p in written)
    again = plots.save_plots(None, frame, None, tmp_path, 0.5, "val")  # a re-evaluation: no curves, its own folder
    assert {p.relative_to(tmp_path).as_posix() for p in again} == {f"val/{name}" for name in plots.FILES}


def _marker(ax, prefix):
    lines = [line for line in ax.get_lines() if line.get_label().startswith(prefix)]
    assert len(lines) == 1, [line.get_label() for line in ax.get_lines()]
    return float(lines[0].get_xdata()[0]), float(lines[0].get_ydata()[0])


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.62])
def test_roc_and_pr_operating_points_match_numpy(frame, threshold):
    roc_ax = plots.roc(frame, threshold, "val").axes[0]
    pr_ax = plots.precision_recall(frame, threshold, "val").axes[0]
    for level, part in (("image", frame), ("study", by_study(frame))):
        sensitivity, false_positive_rate, precision = numpy_point(part["label"], part["probability"], threshold)
        assert _marker(roc_ax, f"{level} at") == pytest.approx((false_positive_rate, sensitivity))
        assert _marker(pr_ax, f"{level} at") == pytest.approx((sensitivity, precision))
    assert "val" in roc_ax.get_title() and "val" in pr_ax.get_title()
    legend = [t.get_text() for t in roc_ax.get_legend().get_texts()]
    studies = by_study(frame)
    assert any(f"image (n={len(frame)}, {frame['label'].sum()} abnormal)" in t for t in legend)
    assert any(f"study (n={len(studies)}, {studies['label'].sum()} abnormal)" in t for t in legend)


def test_roc_curve_is_scikit_learns(frame):
    from sklearn.metrics import roc_curve

    ax = plots.roc(frame, 0.5, "test").axes[0]
    curve = next(line for line in ax.get_lines() if line.get_label().startswith("image (n="))
    fpr, tpr, _ = roc_curve(frame["label"], frame["probability"])
    np.testing.assert_allclose(curve.get_xdata(), fpr)
    np.testing.assert_allclose(curve.get_ydata(), tpr)


@pytest.mark.parametrize("threshold", [0.4, 0.5])
def test_confusion_counts_equal_a_crosstab(frame, threshold):
    fig = plots.confusion_matrices(frame, threshold, "test")
    assert "test" in fig.get_suptitle() and f"{threshold:g}" in fig.get_suptitle()
    for ax, part in zip(fig.axes, (frame, by_study(frame))):
        table = pd.crosstab(part["label"], part["probability"] > threshold).reindex(
            index=[0, 1], columns=[False, True], fill_value=0)
        np.testing.assert_array_equal(shown_counts(ax), table.to_numpy())
        assert f"n={len(part)}" in ax.get_title()


def shown_counts(ax) -> np.ndarray:
    """The 2x2 counts a confusion-matrix axes prints ("count\n(share)" at each cell's centre)."""
    shown = np.zeros((2, 2), int)
    for text in ax.texts:
        x, y = text.get_position()
        shown[round(y), round(x)] = int(text.get_text().split("\n")[0])
    return shown


def test_calibration_bins_match_numpy(frame):
    ax = plots.calibration(frame, "test", n_bins=5, threshold=0.5).axes[0]
    line = next(line for line in ax.get_lines() if line.get_label().startswith("image"))
    bins = np.minimum((frame["probability"].to_numpy() * 5).astype(int), 4)
    observed = [frame["label"].to_numpy()[bins == b].mean() for b in range(5) if (bins == b).any()]
    predicted = [frame["probability"].to_numpy()[bins == b].mean() for b in range(5) if (bins == b).any()]
    np.testing.assert_allclose(line.get_ydata(), observed)
    np.testing.assert_allclose(line.get_xdata(), predicted)


def test_curves_have_whole_epochs_the_best_epoch_and_the_learning_rate(history):
    fig = plots.training_curves(history, best_epoch=3)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["loss", "ROC AUC", "accuracy", "learning rate (at the end of each epoch)"]
    for ax in fig.axes:
        assert list(ax.get_xticks()) == [1, 2, 3, 4]  # history's epoch counts from 0, the plot from 1
    auc = fig.axes[1]
    assert _marker(auc, "best epoch 3") == pytest.approx((3, 0.71))  # val_auc of the row with epoch == 2
    rate = fig.axes[3].get_lines()[0]
    np.testing.assert_allclose(rate.get_ydata(), history["learning_rate"])


def test_one_class_data_draws_a_note_not_an_error(tmp_path):
    only_normal = pd.DataFrame({"study": ["a", "a", "b"], "label": [0, 0, 0], "probability": [0.2, 0.7, 0.1]})
    fig = plots.roc(only_normal, 0.5, "test")
    assert any(re.search("one class only", t.get_text()) for t in fig.axes[0].texts)
    assert plots.save_figure(plots.precision_recall(only_normal, 0.5), tmp_path / "pr.png").stat().st_size > 0
    # calibration: no reliability curve for a one-class level, but the histogram still counts its images
    top, bottom = plots.calibration(only_normal).axes
    assert not top.get_lines()
    normal_bars = [bar.get_height() for bar in bottom.patches[:10]]  # 10 bins; the abnormal bars follow
    np.testing.assert_array_equal(normal_bars, np.histogram([0.2, 0.7, 0.1], bins=np.linspace(0, 1, 11))[0])
    # confusion matrices, counted by hand: images 0.2 and 0.1 normal, 0.7 abnormal; studies a (mean
    # 0.45) and b (0.1) both normal
    image, study = plots.confusion_matrices(only_normal, 0.5).axes[:2]
    np.testing.assert_array_equal(shown_counts(image), [[2, 1], [0, 0]])
    np.testing.assert_array_equal(shown_counts(study), [[2, 0], [0, 0]])
