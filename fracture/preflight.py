"""Checks that run before a training run costs anything: no Keras import, no run folder, no decoding.

Everything a user can get wrong in a config is caught here, in about a second, with one `error:`
line: a name (backbone, optimizer, activation, pooling, study type: see config.validate), a
weights file, the data folder and its splits, a run name that would write outside `runs_dir`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from fracture import config as config_lib
from fracture import diskspace
from fracture.data import load_index
from fracture.errors import DataError, WeightsError

log = logging.getLogger(__name__)

NO_WEIGHTS = config_lib.NO_WEIGHTS  # weights= values that mean "random initialisation"
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"  # the first bytes of every HDF5 file (Keras .h5 weights)


def weights_source(weights: str) -> str:
    """'imagenet', 'none', or 'file' for a path."""
    choice = weights.strip().lower()
    if choice == "imagenet":
        return "imagenet"
    return "none" if choice in NO_WEIGHTS else "file"


def check_weights_file(weights: str) -> Path:
    """A weights path must be an existing HDF5 file (what keras.applications loads by layer name)."""
    path = Path(weights.strip()).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path} (use weights=imagenet, weights=none or the path of "
                           "a Keras .h5 weights file)")
    with open(path, "rb") as handle:
        if handle.read(len(HDF5_SIGNATURE)) != HDF5_SIGNATURE:
            raise WeightsError(f"weights file {path} is not an HDF5 (.h5) file: pass the no-top ImageNet weights "
                               "file that Keras downloads for this backbone, or weights=none")
    return path


def check_splits(frame: pd.DataFrame) -> None:
    """Training needs train and val images; a missing test split is reported, not fatal."""
    counts = frame["split"].value_counts()
    for split in ("train", "val"):
        if not counts.get(split, 0):
            raise DataError(f"no '{split}' images found: check data_dir and study_type")
    if not counts.get("test", 0):
        log.warning("the data has no 'test' images (MURA's valid/ folder): test evaluation and plots are skipped")


def check(cfg) -> pd.DataFrame:
    """Validate `cfg` and index its data; returns the image table that training will use."""

    config_lib.validate(cfg)  # a Config built in code, not through load(), is checked too
    # A read-only, full-permission-denied or impossible folder fails here, not after the model is built.
    diskspace.check_writable_folder(cfg.runs_dir, "runs_dir")
    if cfg.cache_dir:
        diskspace.check_writable_folder(cfg.cache_dir, "cache_dir")
    if weights_source(cfg.weights) == "file":
        check_weights_file(cfg.weights)
    frame = load_index(cfg)
    check_splits(frame)
    return frame
