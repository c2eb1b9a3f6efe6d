"""Mistakes in a training config fail before Keras loads, before decoding, and leave no run folder."""

import json
import shutil
import subprocess
import sys

import keras
import pytest

import fracture as fr
from fracture import config
from fracture.errors import ConfigError
from tests.conftest import tiny_config

PROBE = ("import sys; from fracture.cli import main; code = main(sys.argv[1:]); "
         "print('keras loaded' if 'keras' in sys.modules else 'keras not loaded'); sys.exit(code)")


@pytest.mark.parametrize("override, message", [
    ("backbone=Nope", "unknown backbone 'Nope'"),
    ("backbone=DenseNet122", "Did you mean 'DenseNet121'?"),
    ("optimizer=adma", "Did you mean 'adam'?"),
    ("optimizer=nope", "unknown optimizer 'nope'"),
    ("dense_activation=nope", "unknown dense_activation 'nope'"),
    ("pooling=mean", "unknown pooling 'mean'"),
    ("study_type=XR_KNEE", "unknown study_type 'XR_KNEE'"),
    ("run_name=../../x", "bad run_name '../../x'"),
    ("run_name=a/b", "bad run_name 'a/b'"),
    ("weights=/no/such/file.h5", "weights file not found: /no/such/file.h5"),
    ("weights={not_h5}", "is not an HDF5 (.h5) file"),
    ("data_dir=/no/such/folder", "no MURA v1.1 data at '/no/such/folder'"),
])
def test_bad_training_config_fails_fast_with_one_line_and_no_folder(tmp_path, synth_root, override, message):
    not_h5 = tmp_path / "weights.h5"
    not_h5.write_text("this is not HDF5")
    runs = tmp_path / "runs"
    override = override.format(not_h5=not_h5)
    base = [f"data_dir={synth_root}", f"runs_dir={runs}", f"cache_dir={tmp_path / 'cache'}", "mlflow=false"]
    # A key given twice is an error of its own, so the override replaces the base setting.
    args = ["train", *[a for a in base if a.split("=")[0] != override.split("=")[0]], override]
    result = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] != []
    assert "keras not loaded" in result.stdout
    assert not runs.exists() and not (tmp_path / "x").exists()


def test_names_are_matched_case_insensitively_and_stored_canonically():
    cfg = config.load(overrides=dict(backbone="densenet121", optimizer="Adam", dense_activation="ReLU",
                                     study_type="xr_humerus,xr_wrist"))
    assert (cfg.backbone, cfg.optimizer, cfg.dense_activation, cfg.study_type) == (
        "DenseNet121", "adam", "relu", "XR_HUMERUS,XR_WRIST")


def test_every_accepted_name_exists_in_keras():
    for name, module in config.BACKBONES.items():  # the name, and the module that defines it
        assert getattr(getattr(keras.applications, module), name) is getattr(keras.applications, name), name
    for name in config.OPTIMIZERS:
        assert isinstance(keras.optimizers.get(name), keras.optimizers.Optimizer), name
    for name in config.ACTIVATIONS:
        out = keras.ops.convert_to_numpy(keras.activations.get(name)(keras.ops.ones((2, 3))))
        assert out.shape == (2, 3), name  # element-wise


def test_config_built_in_code_is_validated_too(synth_root, tmp_path):
    cfg = fr.Config(data_dir=str(synth_root), backbone="Nope", runs_dir=str(tmp_path / "runs"))
    with pytest.raises(ConfigError, match="unknown backbone 'Nope'"):
        fr.train(cfg)
    assert not (tmp_path / "runs").exists()


def test_study_type_without_valid_images_trains_and_skips_test(synth_root, tmp_path):
    """MURA has both folders for every type, but a user's subset may not: no `valid` (our test split)
    means no test metrics and validation plots, not a crash after training."""
    root = tmp_path / "MURA-v1.1"
    shutil.copytree(synth_root, root)
    shutil.rmtree(root / "valid")
    for csv in root.glob("valid_*.csv"):
        csv.unlink()
    index = fr.load_index(tiny_config(tmp_path, root))
    assert index["label"].dtype.kind == "i" and "test" not in set(index["split"])
    run_dir = fr.train(tiny_config(tmp_path, root, run_name="no-valid", backbone="VGG16"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "test" not in metrics and metrics["val"]["study"]["n"] > 0
    assert (run_dir / "plots" / "val" / "roc.png").is_file() and not (run_dir / "predictions_test.csv").exists()
