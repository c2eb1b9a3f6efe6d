"""Run folders that keep working when moved or copied (another folder, another machine).

A run's config.yaml stores data_dir and cache_dir as they were given, often relative to the folder
training ran in (the repo root). `resolve(cfg, run_dir)` looks for a relative path from there as
well as from the current folder: the folder training ran in is found from the run folder itself,
`<there>/<runs_dir>/<run name>`, so it moves with a moved repo. Data that is nowhere gets one clear
message with the `data_dir=` override that fixes it (`missing_data`), instead of the "no MURA data,
register at Stanford" message meant for a first start.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from fracture import config as config_lib
from fracture.errors import DataError

PATH_KEYS = ("data_dir", "cache_dir")


def origin(run_dir, runs_dir: str) -> Path | None:
    """The folder training ran in, when run_dir still sits at <origin>/<runs_dir>/<name> (runs_dir relative)."""
    run_dir = Path(run_dir).resolve()
    parts = Path(runs_dir).parts
    if Path(runs_dir).is_absolute() or not parts or ".." in parts:
        return None
    above = run_dir.parent
    for part in reversed(parts):
        if above.name != part:
            return None
        above = above.parent
    return above


def candidates(value: str, run_dir, runs_dir: str) -> list[Path]:
    path = Path(value).expanduser()
    if path.is_absolute():
        return [path]
    base = origin(run_dir, runs_dir)
    found = [Path.cwd() / path] + ([base / path] if base is not None else [])
    return list(dict.fromkeys(p.resolve() for p in found))


def resolve(cfg, run_dir):
    """cfg with a relative data_dir / cache_dir made absolute where it exists (else left as stored)."""
    changes = {}
    for key in PATH_KEYS:
        value = getattr(cfg, key)
        if not value or Path(value).is_absolute() or Path(value).exists():
            continue
        existing = [p for p in candidates(value, run_dir, cfg.runs_dir) if p.exists()]
        if existing:
            changes[key] = str(existing[0])
    return dataclasses.replace(cfg, **changes) if changes else cfg


def require_data(cfg, run_dir, verb: str) -> None:
    """DataError unless cfg.data_dir exists: says where it was looked for and how to point at it."""
    if Path(cfg.data_dir).exists():
        return
    where = ", ".join(str(p) for p in candidates(cfg.data_dir, run_dir, cfg.runs_dir))
    raise DataError(f"the data of run {Path(run_dir).name} (data_dir={cfg.data_dir}) is not there any more "
                    f"(looked in {where}): the data or the run folder moved. Say where it is now: "
                    f"`python -m fracture {verb} ... data_dir=/path/to/MURA-v1.1`")


def with_overrides(run, overrides: list[str] | None):
    """The run's config with `key=value` overrides applied (None when there are none)."""
    if not overrides:
        return None
    return config_lib.update(run.config, config_lib.parse_overrides(overrides))


def split_overrides(items: list[str]) -> tuple[list[str], list[str]]:
    """(others, overrides): `key=value` items whose key is a config key and which name no file."""
    names = set(config_lib.field_names())
    others, overrides = [], []
    for item in items:
        key, sep, _ = item.partition("=")
        (overrides if sep and key.strip() in names and not Path(item).exists() else others).append(item)
    return others, overrides
