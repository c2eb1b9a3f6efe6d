"""What the notebooks call besides the core API: profiles, paths, reusing a run, figures.

What the notebooks call besides the core API: profiles, the repository's paths, reusing a run,
its final test evaluation (once), and the one figure the package does not draw (sample images; the
run's figures come from fracture.plots, the maps' from fracture.cam). The notebooks stay thin:
every step that needs more than a call or two lives here.

Profiles (the notebooks' `profile` parameter):
    "full"   the demo recipe (configs/demo.yaml) on data/synthetic, or any config file you name;
             the train notebook reuses the newest complete run of exactly that recipe if one exists
    "smoke"  a 48-px, 2-epoch model on a tiny synthetic set: checks that every cell runs (CI)
FRACTURE_NOTEBOOK_PROFILE, when set, wins over the cell's value: that is how
`pytest --nbval notebooks/` replays the stored (full-profile) notebooks in the smoke profile
(notebooks/conftest.py sets it).

No global state: nothing here changes the working directory, the environment or matplotlib's
backend. Jupyter starts a kernel in notebooks/, so paths from the notebooks and from run configs
are resolved against the repository root explicitly (`root()`), and figures are `Figure` objects.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import numpy as np

from fracture import config as config_lib
from fracture import training
from fracture.errors import ConfigError
from fracture.imageio import read_gray
from fracture.plots import new_figure

PROFILE_ENV = "FRACTURE_NOTEBOOK_PROFILE"
PROFILES = ("full", "smoke")
SMOKE_DATA = "data/synthetic-smoke"
# Small enough that all three notebooks run in a few minutes on 2 CPU cores.
SMOKE = dict(data_dir=f"{SMOKE_DATA}/MURA-v1.1", weights="none", image_size=48, epochs=2, batch_size=8,
             trainable_layers=-1, learning_rate=1e-3, dense_units=[32, 16, 8], runs_dir="saved_models/smoke",
             run_name="notebook", mlflow=False)
PATH_KEYS = ("data_dir", "cache_dir", "runs_dir")
# Keys that name or file a run but do not change what it learns: ignored when looking for a run to reuse.
BOOKKEEPING = ("run_name", "runs_dir", "cache_dir", "mlflow", "mlflow_experiment", "verbose")
SCREEN_WIDTH = 1000  # pixels: pictures shown in a notebook, about the width of JupyterLab's or GitHub's page


def root() -> Path:
    """The repository root: the nearest folder up from the working directory holding
    pyproject.toml and notebooks/ (Jupyter runs kernels in notebooks/; the CLI runs at the root)."""
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "notebooks").is_dir():
            return folder
    return here


def profile(name: str = "full") -> str:
    """The active profile: FRACTURE_NOTEBOOK_PROFILE when set, else `name` (the cell's parameter)."""
    chosen = (os.environ.get(PROFILE_ENV) or name or "full").strip().lower()
    if chosen not in PROFILES:
        raise ConfigError(f"profile must be one of {', '.join(PROFILES)}, not '{chosen}' "
                          f"(the notebook's `profile` parameter or {PROFILE_ENV})")
    return chosen


def resolve_paths(cfg: config_lib.Config) -> config_lib.Config:
    """`cfg` with its relative data/cache/runs folders made absolute against the repository root."""
    base = root()
    return dataclasses.replace(cfg, **{key: str(base / getattr(cfg, key)) for key in PATH_KEYS
                                       if not Path(getattr(cfg, key)).is_absolute()})


def config(profile_name: str = "full", config_file: str = "configs/demo.yaml", **params) -> config_lib.Config:
    """The notebook's Config: the profile's base (the config file, or the smoke settings), then every
    parameter that is not None; paths resolved against the repository root."""
    params = {key: value for key, value in params.items() if value is not None and value != ""}  # unset
    if profile(profile_name) == "smoke":
        ensure_smoke_data()
        cfg = config_lib.load(overrides={**SMOKE, **params})
    else:
        cfg = config_lib.load(root() / config_file if config_file else None, overrides=params)
    return resolve_paths(cfg)


def settings(cfg: config_lib.Config, *keys: str) -> dict:
    """Some of cfg's values for display, its folders shown relative to the repository root."""
    base = root()
    shown = {key: getattr(cfg, key) for key in keys}
    for key in set(keys) & set(PATH_KEYS):
        path = Path(shown[key])
        shown[key] = str(path.relative_to(base)) if path.is_relative_to(base) else str(path)
    return shown


def relative_paths(frame, column: str = "path", to=None):
    """A copy of a table with its file paths shown relative to `to` (default: the repository root;
    e.g. the run's data folder, so that a MURA path fits a table column)."""
    repo = root()
    base = os.path.normpath(repo / (to or "")) + os.sep  # an absolute `to` replaces repo here

    def shown(path: str) -> str:
        full = os.path.normpath(repo / path)  # a relative path in a table is relative to the repository
        return full.removeprefix(base) if full.startswith(base) else path

    return frame.assign(**{column: frame[column].astype(str).map(shown)})


def ensure_smoke_data() -> None:
    if not (root() / SMOKE_DATA / "MURA-v1.1" / "train_image_paths.csv").is_file():
        from fracture.synth import generate  # here, not at the top: it loads cv2, which this module does not

        generate(root() / SMOKE_DATA, patients=24, seed=0, max_size=128, min_size=96)


def recipe(cfg: config_lib.Config) -> dict:
    """What a run learns from: the config without its bookkeeping keys, paths absolute."""
    values = resolve_paths(cfg).to_dict()
    return {key: value for key, value in values.items() if key not in BOOKKEEPING}


def reusable_run(cfg: config_lib.Config) -> Path | None:
    """The newest complete run in cfg.runs_dir trained with exactly this recipe, or None."""
    from fracture import resume  # here, not at the top: it loads Keras, which this module does not
    from fracture.runs import completed_at  # here, not at the top: it loads Keras, which this module does not

    wanted, found = recipe(cfg), []
    for folder in sorted(Path(cfg.runs_dir).glob("*")):
        if (folder / "config.yaml").is_file() and resume.is_complete(folder) and (folder / "model.keras").is_file():
            try:
                stored = config_lib.load(folder / "config.yaml", stored=True)
            except ConfigError:
                continue
            if recipe(stored) == wanted:
                found.append(folder)
    return max(found, key=completed_at) if found else None


def train_or_reuse(cfg: config_lib.Config, reuse: bool = True) -> tuple[Path, bool]:
    """(run folder, reused?). The smoke profile always trains afresh (replacing its last run); the
    full profile reuses a complete run of the same recipe when `reuse`, else trains a new one."""
    if cfg.run_name == SMOKE["run_name"] and Path(cfg.runs_dir).name == "smoke":
        shutil.rmtree(Path(cfg.runs_dir) / cfg.run_name, ignore_errors=True)
    elif reuse:
        found = reusable_run(cfg)
        if found is not None:
            return found, True
    return training.train(cfg), False


def find_run(run: str = "", profile_name: str = "full") -> Path:
    """The run the notebooks use: `run` (a folder) when given; else the newest complete run in
    saved_models/, or in the smoke profile the train notebook's smoke run (trained here if missing)."""
    from fracture.runs import find_run as find  # here, not at the top: it loads Keras, which this module does not

    if run and not Path(run).is_absolute():
        run = str(root() / run)
    if not run and profile(profile_name) == "smoke":
        cfg = config("smoke")
        path = Path(cfg.runs_dir) / cfg.run_name
        if not (path / "model.keras").is_file():
            train_or_reuse(cfg)
        return path
    return find(run or None, runs_dir=root() / "saved_models")


def load_run(run: str = "", profile_name: str = "full"):
    """fracture.load_run on `find_run(...)`, its config's paths resolved against the repository root."""
    from fracture.runs import load_run as load  # here, not at the top: it loads Keras, which this module does not

    loaded = load(find_run(run, profile_name))
    return dataclasses.replace(loaded, config=resolve_paths(loaded.config))


def predictions(run, split: str = "test"):
    """The run's stored per-image predictions of `split` (label, probability, study, ...)."""
    import pandas as pd

    return pd.read_csv(Path(run.path) / f"predictions_{split}.csv")


def final_test_scores(run) -> tuple[dict, bool]:
    """(the run's final test scores, evaluated now?). The test split is the final report, evaluated
    once: a run whose metrics.json already holds it (`make demo` evaluates it) is not scored again,
    so re-running the notebook never turns the test split into a second validation set."""
    from fracture.evaluation import evaluate  # here, not at the top: it loads sklearn, which this module does not

    stored = run.metrics.get("test")
    if isinstance(stored, dict) and stored.get("final"):
        return stored, False
    return evaluate(run, split="test"), True


# --------------------------------------------------------------------------------------------
# figures: the run's figures come from fracture.plots and fracture.cam; only what they do not
# draw lives here (Figure objects: Jupyter shows one returned as a cell's last value)
# --------------------------------------------------------------------------------------------
def samples_figure(frame, n: int = 8, seed: int = 0):
    """A row of training images, half normal, half abnormal, titled with label and patient."""
    import pandas as pd

    train = frame[frame["split"] == "train"]
    picks = pd.concat([part.sample(min(n // 2, len(part)), random_state=seed)
                       for _, part in train.groupby("label")])
    fig = new_figure(1.4 * len(picks), 2.1)  # about 1100 px wide at the notebook's 100 dpi
    for ax, row in zip(np.atleast_1d(fig.subplots(1, len(picks))), picks.itertuples()):
        ax.imshow(read_gray(row.path), cmap="gray")
        ax.set_title(f"{'abnormal' if row.label else 'normal'}\n{row.patient}", fontsize=8)
        ax.set_axis_off()
    return fig


def picture(path, width: int = SCREEN_WIDTH):
    """An image file (a CAM panel, saved at print resolution) for Jupyter to show at screen size:
    at most `width` pixels wide, as a JPEG of quality 90 with full colour resolution. A 150-dpi
    panel is 2-3 MB as PNG; this keeps the colormap readable at about a tenth of that, so the
    stored notebook stays small. The file itself is not changed."""
    import io

    from IPython.display import Image
    from PIL import Image as PILImage

    with PILImage.open(path) as image:
        image = image.convert("RGB")
        if image.width > width:
            image = image.resize((width, round(image.height * width / image.width)), PILImage.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90, subsampling=0)
    return Image(data=buffer.getvalue(), format="jpeg")


def relative_files(folder) -> list[str]:
    """Files under `folder`, relative to it, sorted (a deterministic listing for notebooks)."""
    folder = Path(folder)
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
