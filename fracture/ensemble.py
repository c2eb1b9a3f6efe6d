"""Ensembles of trained runs (the MURA paper averaged five models) with optional flip TTA.

    python -m fracture ensemble --runs A B C [--tta flip] [--threshold auto] [--name NAME]

An image's probability is the mean over members (and over the original and flipped views with
--tta flip); a study's is the mean of its images', as for one model. Each member decodes the
images at its own image_size. The flip is applied to the raw pixels before the model: everything
inside the model (gray->3 channels, the backbone's preprocess_input) works pixel by pixel, so a
flipped input is exactly what the model's own random-flip augmentation showed it in training.

Writes runs_dir/<name>/ like a run, without a model: ensemble.json (members, tta), config.yaml
(the members' shared data settings), predictions_val.csv and predictions_test.csv (one column per
member too), metrics.json (val for selection, test final, 95 % intervals), plots/, complete.json.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from fracture import config as config_lib
from fracture import fileio, plots, portable, runkind, runlock
from fracture.data import load_index, split_arrays
from fracture.errors import FractureError

log = logging.getLogger(__name__)

# The members must agree on these, or their val/test splits hold different images.
SHARED_KEYS = ("data_dir", "data_format", "study_type", "positive_class", "val_fraction", "seed")
TTA_CHOICES = ("none", "flip")


def resolve_member(name_or_path, runs_dir) -> Path:
    """A run folder from a path, or a name inside runs_dir (as the other verbs take --run)."""
    from fracture.runs import find_run  # here, not at the top: it loads Keras, which this module does not

    path = Path(name_or_path)
    if not path.exists() and (Path(runs_dir) / path).exists():
        path = Path(runs_dir) / path
    return find_run(path)


def check_members(configs: dict) -> None:
    if len(configs) < 2:
        raise FractureError("an ensemble needs at least two runs: --runs A B [C ...]")
    (first, cfg), *others = configs.items()
    for key in SHARED_KEYS:
        for name, other in others:
            if getattr(other, key) != getattr(cfg, key):
                raise FractureError(f"runs {first} and {name} differ in {key} ({getattr(cfg, key)!r} vs "
                                    f"{getattr(other, key)!r}): ensemble members must share their data and split")


def member_probabilities(run, split: str, tta: str = "none") -> pd.DataFrame:
    """One member's predictions table of `split` (its own decoding size), TTA views averaged."""
    from fracture.evaluation import predict_images  # here, not at the top: it loads sklearn, which this module does not

    cfg = run.config
    arrays = split_arrays(load_index(cfg), cfg)
    if split not in arrays:
        return pd.DataFrame()
    frame, images, _ = arrays[split]
    views = [images] + ([images[:, :, ::-1, :]] if tta == "flip" else [])  # axis 2: width, a horizontal flip
    probability = np.mean([predict_images(run.model, np.ascontiguousarray(v), cfg.batch_size) for v in views],
                          axis=0)
    return frame.assign(probability=probability)


def average(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Rows matched by image path; `probability` the members' mean, plus one column per member."""
    names = list(tables)
    base = tables[names[0]].drop(columns="probability")
    out = base.copy()
    for name in names:
        table = tables[name].set_index("path")["probability"]
        if set(table.index) != set(base["path"]):
            raise FractureError(f"run {name} read other images of this split than {names[0]} (an unreadable "
                                "file or a different max_pixels?): their predictions cannot be averaged")
        out[f"probability_{name}"] = base["path"].map(table).to_numpy()
    out["probability"] = out[[f"probability_{n}" for n in names]].mean(axis=1)
    return out


def build(runs, tta: str = "none", threshold: str | float | None = None, name: str = "",
          runs_dir="saved_models", force: bool = False, overrides: list[str] | None = None) -> Path:
    """Average the runs' probabilities on val and test; write the ensemble folder; returns it.

    An ensemble folder is a run like the others: locked while written, `kind.json` first (so an
    interrupted one names the command that finishes it), `complete.json` last. The same command
    again finishes an interrupted ensemble; force=True replaces an existing folder of that name.
    overrides (key=value, e.g. data_dir=...) apply to every member's config: data that moved."""
    from fracture.runs import load_run  # here, not at the top: it loads Keras, which this module does not

    if tta not in TTA_CHOICES:
        raise FractureError(f"unknown --tta {tta!r}: choose one of {', '.join(TTA_CHOICES)}")
    members = {}
    for item in runs:
        path = resolve_member(item, runs_dir)
        if path.name in members:
            raise FractureError(f"run {path.name} is listed twice")
        members[path.name] = load_run(path)
        if overrides:
            members[path.name].config = portable.with_overrides(members[path.name], overrides)
        portable.require_data(members[path.name].config, path, "ensemble")
    check_members({n: r.config for n, r in members.items()})
    first = next(iter(members.values()))
    chosen = _threshold_setting(members, threshold)
    cfg = config_lib.update(first.config, {"threshold": chosen, "run_name": name or
                                           f"ensemble-{datetime.now():%Y%m%d-%H%M%S}", "runs_dir": str(runs_dir)})
    out_dir = Path(cfg.runs_dir) / cfg.run_name
    command = ["python", "-m", "fracture", "ensemble", *(overrides or []), "--runs",
               *[str(r.path) for r in members.values()], "--tta", tta, "--name", cfg.run_name,
               "--runs-dir", str(runs_dir), *(["--threshold", str(threshold)] if threshold is not None else [])]
    with runlock.hold(out_dir, "ensemble"):
        _prepare_folder(out_dir, members, tta, chosen, force, command)
        return _build(members, cfg, out_dir, tta)


def _prepare_folder(out_dir: Path, members: dict, tta: str, chosen, force: bool, command: list[str]) -> None:
    """Empty (force), resume (the same ensemble, interrupted) or refuse an existing folder; then kind.json."""
    import shutil

    from fracture import resume  # here, not at the top: it loads Keras, which this module does not

    plan = {"members": sorted(str(r.path.resolve()) for r in members.values()), "tta": tta, "threshold": str(chosen)}
    if out_dir.exists() and force:
        log.info("--force: replacing %s", out_dir)
        shutil.rmtree(out_dir)
    elif out_dir.exists():
        if resume.is_complete(out_dir):
            raise FractureError(f"ensemble {out_dir} is already complete: pick another --name, or pass --force to "
                                "replace it")
        info = runkind.read(out_dir)
        if info.get("kind") != "ensemble" or info.get("plan") != plan:
            raise FractureError(f"{out_dir} exists and holds {'another ensemble' if info.get('kind') == 'ensemble' else 'something else'}"
                                f": pick another --name, or pass --force to replace it")
        log.info("finishing the interrupted ensemble %s", out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runkind.write(out_dir, "ensemble", command, plan=plan)


def _build(members: dict, cfg, out_dir: Path, tta: str) -> Path:
    from fracture import resume  # here, not at the top: it loads Keras, which this module does not
    # here, not at the top: it loads sklearn, which this module does not
    from fracture.evaluation import choose_threshold, score_frame

    frames = {split: average({n: member_probabilities(r, split, tta) for n, r in members.items()})
              for split in ("val", "test")}
    if frames["val"].empty:
        raise FractureError(f"no validation images in {cfg.data_dir}: the ensemble's threshold and report need them")
    if cfg.threshold == "auto":
        value, rule = choose_threshold(frames["val"], cfg)
    else:
        value, rule = float(cfg.threshold), "fixed"
    metrics = {"run": cfg.run_name, "kind": "ensemble", "members": list(members), "tta": tta, "threshold": value,
               "threshold_rule": rule, "counts": {s: int(len(f)) for s, f in frames.items()}}
    for split, frame in frames.items():
        if frame.empty:
            continue
        metrics[split] = {**score_frame(frame, value, cfg.bootstrap_resamples, cfg.seed), "threshold": value}
        with fileio.atomic_path(out_dir / f"predictions_{split}.csv") as tmp:
            frame.to_csv(tmp, index=False)
    if "test" in metrics:  # chosen on nothing but val: this is the one final test report of the ensemble
        metrics["test"].update(final=True, evaluated=datetime.now().isoformat(timespec="seconds"), evaluations=1)
    for split, frame in frames.items():  # no training curves: an ensemble is not trained
        if split in metrics:
            plots.save_plots(None, frame, metrics[split], out_dir / "plots", value, split)
    cfg.to_yaml(out_dir / "config.yaml")
    fileio.atomic_write_text(out_dir / "ensemble.json", json.dumps({
        "members": [{"name": n, "path": str(r.path.resolve()), "image_size": r.config.image_size,
                     "backbone": r.config.backbone, "threshold": r.threshold} for n, r in members.items()],
        "tta": tta, "created": datetime.now().isoformat(timespec="seconds")}, indent=2))
    fileio.atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2))
    resume.write_marker(out_dir, metrics)
    return out_dir


def _threshold_setting(members: dict, threshold) -> str | float:
    """--threshold when given; else auto when any member chose its own, or the members' common number."""
    if threshold is not None:
        return threshold
    values = {r.config.threshold for r in members.values()}
    if "auto" in values or len(values) > 1:
        return "auto"
    return values.pop()


def cli_ensemble(args) -> None:
    from fracture.evaluation import format_table  # here, not at the top: it loads sklearn, which this module does not

    runs, overrides = portable.split_overrides(args.runs)  # `--runs A B data_dir=...` reads as intended
    out_dir = build(runs, args.tta, args.threshold, args.name, args.runs_dir, force=args.force,
                    overrides=[*getattr(args, "overrides", []), *overrides])
    metrics = json.loads((out_dir / "metrics.json").read_text())
    print(f"ensemble of {', '.join(metrics['members'])} (tta: {metrics['tta']}), threshold {metrics['threshold']:.3f} "
          f"({metrics['threshold_rule']}):")
    for split, role in (("val", "selection"), ("test", "final, held out")):
        if split in metrics:
            print(f"{split} ({role}):")
            print(format_table(metrics[split]))
    print(f"ensemble folder: {out_dir}")
