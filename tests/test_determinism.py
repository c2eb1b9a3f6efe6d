"""deterministic=true: the same command, run twice on this machine, writes the same bytes.

Two separate processes (the switches are process-wide and cannot be undone inside pytest), each
`python -m fracture train ... deterministic=true`, under whatever KERAS_BACKEND is set (`make test`
runs this file's backend-marked test under TensorFlow, JAX and PyTorch).
"""

import os
import subprocess
import sys
from pathlib import Path

import keras
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
TINY_RUN = ["backbone=VGG16", "weights=none", "trainable_layers=-1", "image_size=32", "epochs=2", "batch_size=4",
            "dense_units=16,8,4", "learning_rate=1e-3", "mlflow=false", "bootstrap_resamples=0", "seed=7"]


def train(synth_root, tmp_path, name: str, *extra) -> Path:
    runs = tmp_path / "runs"
    result = subprocess.run(
        [sys.executable, "-m", "fracture", "-q", "train", f"data_dir={synth_root}", f"runs_dir={runs}",
         f"cache_dir={tmp_path / 'cache'}", f"run_name={name}", *TINY_RUN, *extra],
        capture_output=True, text=True, timeout=1500, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    return runs / name


@pytest.mark.slow
@pytest.mark.backend
def test_two_deterministic_runs_write_identical_history_and_predictions(synth_root, tmp_path):
    first = train(synth_root, tmp_path, "first", "deterministic=true")
    second = train(synth_root, tmp_path, "second", "deterministic=true")
    history = pd.read_csv(first / "history.csv")
    assert len(history) == 2 and history["loss"].nunique() == 2  # it trained: the loss moved
    predictions = pd.read_csv(first / "predictions_val.csv")["probability"]
    assert predictions.nunique() > 1  # not a constant output, which would repeat trivially
    for name in ("history.csv", "predictions_val.csv"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), (keras.backend.backend(), name)
