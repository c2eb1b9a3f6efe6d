"""Ensembles of two tiny runs (different backbones and image sizes) against each member's own
`predict_paths`, run independently on the image files (and on mirrored copies for flip TTA)."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageOps

import fracture as fr
from fracture import config
from fracture.cli import main
from fracture.ensemble import check_members
from fracture.errors import FractureError
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def second_run(train_data, tmp_path_factory):
    """Another member: VGG16 at 48 px (the fixture run is DenseNet121 at 32 px), same data and split."""
    tmp = tmp_path_factory.mktemp("second")
    return fr.train(tiny_config(tmp, train_data, run_name="vgg48", backbone="VGG16", image_size=48))


def mirrored_copies(paths, folder):
    out = []
    for i, path in enumerate(paths):
        target = folder / f"{i}.png"
        ImageOps.mirror(Image.open(path)).save(target)
        out.append(str(target))
    return out


@pytest.mark.parametrize("tta", ["none", "flip"])
def test_ensemble_is_the_mean_of_its_members(trained_run, second_run, tmp_path, tta, capsys):
    code = main(["ensemble", "--runs", str(trained_run), str(second_run), "--tta", tta, "--name", f"ens-{tta}",
                 "--threshold", "auto", "--runs-dir", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    out_dir = tmp_path / f"ens-{tta}"
    printed = capsys.readouterr().out
    assert "val (selection)" in printed and "test (final, held out)" in printed
    for name in ("ensemble.json", "config.yaml", "metrics.json", "predictions_val.csv", "predictions_test.csv",
                 "plots/val/roc.png", "plots/test/confusion_matrix.png", "complete.json"):
        assert (out_dir / name).is_file(), name

    table = pd.read_csv(out_dir / "predictions_val.csv")
    paths = table["path"].tolist()
    expected = []
    for run_dir in (trained_run, second_run):
        run = fr.load_run(run_dir)
        views = [fr.predict_paths(run, paths)["probability"].to_numpy()]
        if tta == "flip":
            views.append(fr.predict_paths(run, mirrored_copies(paths, tmp_path))["probability"].to_numpy())
        expected.append(np.mean(views, axis=0))
        np.testing.assert_allclose(table[f"probability_{run.name}"], expected[-1], atol=1e-5)
    np.testing.assert_allclose(table["probability"], np.mean(expected, axis=0), atol=1e-5)

    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["members"] == ["tiny", "vgg48"] and metrics["tta"] == tta
    assert metrics["test"]["final"] is True and "auc_ci" in metrics["test"]["study"]
    # threshold=auto: chosen on the ensemble's validation studies (Youden's J), study means by hand.
    studies = table.groupby("study").agg(label=("label", "max"), probability=("probability", "mean"))
    if studies["label"].nunique() == 2:
        from sklearn.metrics import roc_curve

        fpr, tpr, _ = roc_curve(studies["label"], studies["probability"])
        predicted = studies["probability"] > metrics["threshold"]
        sens = (predicted & (studies["label"] == 1)).sum() / (studies["label"] == 1).sum()
        spec = (~predicted & (studies["label"] == 0)).sum() / (studies["label"] == 0).sum()
        assert sens + spec - 1 == pytest.approx((tpr - fpr).max())


def test_members_must_share_data_and_split(tmp_path):
    a = config.load(overrides={"study_type": "XR_HUMERUS"})
    b = config.load(overrides={"study_type": "XR_WRIST"})
    with pytest.raises(FractureError, match="differ in study_type"):
        check_members({"a": a, "b": b})
    with pytest.raises(FractureError, match="at least two runs"):
        check_members({"a": a})
