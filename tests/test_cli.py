import subprocess
import sys

import pytest

from fracture.cli import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "fracture", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, message", [
    (["train", "epohcs=2"], "unknown config key 'epohcs'. Did you mean 'epochs'?"),
    (["train", "batch_size=big"], "bad value for 'batch_size'"),
    (["train", "--config", "nope.yaml"], "config file not found: nope.yaml"),
    (["train", "weights=none"], "would keep part of a random backbone frozen; set trainable_layers=-1"),
    (["cv", "weights=none", "trainable_layers=10"], "set trainable_layers=-1"),
])
def test_config_mistakes_fail_fast_and_clearly(args, message):
    probe = ("import sys; from fracture.cli import main; code = main(sys.argv[1:]); "
             "print('keras loaded' if 'keras' in sys.modules else 'keras not loaded'); sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert "keras not loaded" in result.stdout  # failed before any heavy import


def test_synth_cli(tmp_path):
    result = run_cli("synth", "--out", str(tmp_path), "--patients", "4", "--max-size", "64")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "MURA-v1.1" / "train_labeled_studies.csv").is_file()


def test_predict_prints_a_table_for_a_folder(trained_run, synth_root, capsys):
    folder = next(synth_root.glob("valid/XR_HUMERUS/*/*_positive"))
    assert main(["predict", str(folder), "--run", str(trained_run)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["path", "probability", "label"]
    assert len(lines) == 1 + len(list(folder.glob("*.png")))
    assert all(line.split()[-1] in ("normal", "abnormal") for line in lines[1:])


def test_predict_missing_file_is_a_clear_error(trained_run, capsys):
    assert main(["predict", "/no/such/image.png", "--run", str(trained_run)]) == 2
    assert "no such image or folder: /no/such/image.png" in capsys.readouterr().err


def test_evaluate_prints_image_and_study_rows(trained_run, capsys):
    assert main(["evaluate", "--run", str(trained_run), "--split", "test"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "test split (final, held out" in out and "run tiny, threshold 0.500" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert {"image", "study"} <= set(rows)
    assert "kappa" in out and "auc" in out
    assert out.count("kappa") == 1 and "kappa" not in captured.err  # one table, not one more in the log
    assert rows["image"][1].isdigit() and rows["study"][1].isdigit()  # counts print as integers


def test_evaluate_defaults_to_the_validation_split_and_leaves_test_unspent(trained_run, tmp_path, capsys):
    """Plain `evaluate` scores val (as predictions_val.csv shows); the test split is spent only by name."""
    import json
    import shutil

    import pandas as pd

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = json.loads((run / "metrics.json").read_text())["test"]
    assert main(["evaluate", "--run", str(run)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("val split (selection), run ")
    image_row = next(line.split() for line in out.splitlines() if line.startswith("image"))
    assert int(image_row[1]) == len(pd.read_csv(run / "predictions_val.csv"))
    assert json.loads((run / "metrics.json").read_text())["test"] == before  # not evaluated again
    assert "test: the held-out final report" in " ".join(run_cli("evaluate", "--help").stdout.split())


def test_help_shows_defaults_keys_and_version():
    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("fracture ")
    train_help = run_cli("train", "--help").stdout
    for name in ("epochs=40", "backbone='DenseNet121'", "max_pixels=40000000", "learning_rate=0.0001"):
        assert name in train_help, name
    assert "(default: relu)" in run_cli("cam", "--help").stdout
    assert "keras" not in run_cli("--version").stderr.lower()


def test_missing_run_is_a_clear_error(tmp_path, capsys):
    assert main(["evaluate", "--run", str(tmp_path)]) == 2
    assert "no trained run at" in capsys.readouterr().err
