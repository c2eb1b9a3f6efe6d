"""What the notebooks call besides the core API: the run profile and a few figures.

The notebooks' first cell (tagged `parameters`) holds the real recipe. Setting
`FRACTURE_NOTEBOOK_PROFILE=smoke` swaps in a tiny synthetic configuration (CI, `make notebooks`)
without editing any cell.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import keras  # noqa: F401  imported here so the backend's start-up log lines land in the (unchecked) setup cell
import numpy as np

from fracture import config as config_lib

# Jupyter starts kernels in notebooks/; the notebooks' paths (data/, saved_models/, layer_outputs/)
# mean the repository's folders, so work from the repository root.
REPO_ROOT = Path(__file__).resolve().parent.parent
if (REPO_ROOT / "notebooks").is_dir():
    os.chdir(REPO_ROOT)

PROFILE_ENV = "FRACTURE_NOTEBOOK_PROFILE"
SMOKE_DATA = "data/synthetic-smoke"
SMOKE_RUNS = "saved_models/smoke"
# Small enough that all three notebooks run in a few minutes on 2 CPU cores.
SMOKE = dict(data_dir=f"{SMOKE_DATA}/MURA-v1.1", weights="none", image_size=48, epochs=2, batch_size=8,
             trainable_layers=-1, learning_rate=1e-3, dense_units=[32, 16, 8], runs_dir=SMOKE_RUNS,
             run_name="notebook", mlflow=False)


def profile() -> str:
    return os.environ.get(PROFILE_ENV, "full").strip().lower() or "full"


def config(params: dict) -> config_lib.Config:
    """The notebook's parameters, with the smoke profile applied when selected."""
    name = profile()
    if name not in ("full", "smoke"):
        raise config_lib.ConfigError(f"{PROFILE_ENV} must be 'full' or 'smoke', not '{name}'")
    params = {k: v for k, v in params.items() if k != "run"}
    if name == "smoke":
        params.update(SMOKE)
        if not (Path(SMOKE_DATA) / "MURA-v1.1" / "train_image_paths.csv").is_file():
            from fracture.synth import generate

            generate(SMOKE_DATA, patients=24, seed=0, max_size=128, min_size=96)
    return config_lib.load(overrides=params)


def fresh_run(cfg) -> None:
    """Smoke profile only: drop the previous smoke run so the train notebook can re-run."""
    if profile() == "smoke":
        shutil.rmtree(Path(cfg.runs_dir) / cfg.run_name, ignore_errors=True)


def run_path(params: dict) -> Path:
    """The run the load/visualize notebooks use: params['run'] (empty = newest in saved_models/);
    with the smoke profile, the train notebook's smoke run (trained here if missing)."""
    from fracture.model import find_run

    if profile() == "smoke":
        cfg = config({})  # the smoke run's config; the notebook's other params are not Config keys
        path = Path(cfg.runs_dir) / cfg.run_name
        if not (path / "model.keras").is_file():
            from fracture.train import train

            fresh_run(cfg)
            train(cfg)
        return path
    return find_run(params.get("run") or None)


def show_samples(frame, cfg, n: int = 8, seed: int = 0):
    """A row of training images with their labels and patients."""
    import matplotlib.pyplot as plt
    import pandas as pd

    from fracture.imageio import read_gray

    train = frame[frame["split"] == "train"]
    picks = pd.concat([train[train["label"] == label].sample(min(n // 2, int((train["label"] == label).sum())),
                                                                random_state=seed) for label in (0, 1)])
    fig, axes = plt.subplots(1, len(picks), figsize=(2 * len(picks), 2.6))
    for ax, row in zip(np.atleast_1d(axes), picks.itertuples()):
        ax.imshow(read_gray(row.path), cmap="gray")
        ax.set_title(f"{'abnormal' if row.label else 'normal'}\n{row.patient}", fontsize=8)
        ax.axis("off")
    plt.show()


def show_pngs(paths, width: float = 4.5):
    """Show saved PNG files (run plots, CAM panels) side by side."""
    import matplotlib.pyplot as plt

    paths = [Path(p) for p in paths]
    fig, axes = plt.subplots(1, len(paths), figsize=(width * len(paths), width))
    for ax, path in zip(np.atleast_1d(axes), paths):
        ax.imshow(plt.imread(path))
        ax.set_title(path.name, fontsize=9)
        ax.axis("off")
    plt.show()


def relative_files(folder) -> list[str]:
    """Files under `folder`, relative to it, sorted (a deterministic listing for notebooks)."""
    folder = Path(folder)
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
