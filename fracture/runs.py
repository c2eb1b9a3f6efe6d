"""Run folders on disk: find the newest complete run, load its model, config and metrics.

A run folder is complete once training wrote `complete.json` (fracture/resume.py); `find_run`
and `load_run` pick only complete runs, and name the incomplete ones they skip.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import keras

from fracture import config as config_lib
from fracture import portable, resume
from fracture.errors import FractureError

log = logging.getLogger(__name__)


@dataclass
class Run:
    """A trained run folder: its model, resolved config and stored metrics."""

    path: Path
    model: keras.Model
    config: config_lib.Config
    metrics: dict

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def threshold(self) -> float:
        """The decision threshold every reader of a run uses: the config's number, or for
        threshold=auto the one chosen on validation and stored in metrics.json."""
        if self.config.threshold != "auto":
            return float(self.config.threshold)
        if "threshold" not in self.metrics:
            raise FractureError(f"run {self.path} has threshold=auto but no chosen threshold in metrics.json; "
                                f"choose it with `python -m fracture evaluate --run {self.path} --split val`")
        return float(self.metrics["threshold"])


def load_model(path) -> keras.Model:
    path = Path(path)
    if not path.is_file():
        raise FractureError(f"model file not found: {path}")
    return keras.saving.load_model(path, compile=False)


def find_run(path=None, runs_dir="saved_models") -> Path:
    """A complete run folder from a path (folder or its model.keras), or the newest complete one in
    `runs_dir` (by the time it completed). Incomplete runs (training unfinished or killed) are never
    picked by default: they are named in a warning; an explicit incomplete one is an error."""
    if path:
        path = Path(path)
        path = path.parent if path.is_file() else path
        if resume.is_incomplete(path):
            raise FractureError(f"run {path} is incomplete (training or its final evaluation did not finish, "
                                f"no {resume.MARKER}); {resume.resume_hint(path)}")
        if not (path / "model.keras").is_file():
            raise FractureError(f"no trained run at {path} (expected {path / 'model.keras'}); "
                                "train one with `python -m fracture train`")
        return path
    folders = sorted(p for p in Path(runs_dir).glob("*") if p.is_dir())
    incomplete = [p.name for p in folders if resume.is_incomplete(p)]
    if incomplete:
        log.warning("skipping incomplete runs in %s/ (training unfinished or killed; rerun their train command "
                    "to resume): %s", runs_dir, ", ".join(incomplete))
    complete = [p for p in folders if resume.is_complete(p) and (p / "model.keras").is_file()]
    if not complete:
        raise FractureError(f"no trained run in {runs_dir}/; train one with `make demo` or `python -m fracture train`")
    return max(complete, key=completed_at)


def completed_at(run_dir: Path) -> float:
    """When a complete run completed: the time of its complete.json."""
    return (run_dir / resume.MARKER).stat().st_mtime


def load_run(path=None, runs_dir="saved_models") -> Run:
    path = find_run(path, runs_dir)
    cfg = portable.resolve(config_lib.load(path / "config.yaml", stored=True), path)
    metrics_file = path / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    return Run(path=path, model=load_model(path / "model.keras"), config=cfg, metrics=metrics)
