"""The single source of defaults: one dataclass, YAML files and `key=value` overrides.

This module imports no deep-learning framework, so a bad override fails in milliseconds,
before Keras or TensorFlow are loaded.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from fracture.errors import ConfigError


@dataclass
class Config:
    # --- data -------------------------------------------------------------------------------
    data_dir: str = "data/MURA-v1.1"  # MURA v1.1 folder (or its parent), or a class-folder root
    data_format: str = "mura"  # "mura" (MURA tree + CSVs) or "folders" (<root>/{train,val,test}/<class>/)
    study_type: str = "XR_HUMERUS"  # one of the seven XR_* types, a comma list, or "all"
    positive_class: str = "fractured"  # class-folder name that means "fracture" (data_format=folders)
    val_fraction: float = 0.2  # share of training *patients* held out for validation
    cache_dir: str = "data/processed"  # decoded uint8 arrays, keyed by file list + image size
    max_pixels: int = 40_000_000  # images whose header claims more pixels are skipped unread (bombs)
    # --- model ------------------------------------------------------------------------------
    backbone: str = "DenseNet121"  # any name in fracture.model.BACKBONES
    weights: str = "imagenet"  # "imagenet" (Keras cache ~/.keras/models), "none", or a weights file path
    allow_random_weights: bool = False  # if ImageNet weights are missing offline: warn and start from scratch
    image_size: int = 224  # square model input, pixels
    pooling: str = "avg"  # global pooling after the backbone: "avg" or "max" (max finds small lesions faster)
    dense_units: list[int] = field(default_factory=lambda: [512, 256, 64])  # the three dense layers
    dense_activation: str = "relu"  # activation of the dense layers
    dropout: float = 0.3  # after each dense layer
    trainable_layers: int = 60  # unfreeze the top N backbone layers; -1 = all
    batchnorm_momentum: float = 0.99  # moving-statistics momentum of the trainable BatchNorm layers
    # --- augmentation (inside the model, active only in training) ---------------------------
    flip: bool = True  # random horizontal flip
    rotation: float = 30.0  # max rotation, degrees
    zoom: float = 0.1  # max zoom fraction
    translate: float = 0.05  # max translation fraction
    # --- training ---------------------------------------------------------------------------
    batch_size: int = 16  # images per training step
    epochs: int = 40  # training epochs
    optimizer: str = "adam"  # any keras.optimizers name: adam, sgd, rmsprop, adamw ...
    learning_rate: float = 1e-4  # initial learning rate
    momentum: float = 0.0  # for sgd (Nesterov when > 0) and rmsprop; ignored by the others
    gamma: float = 0.99  # learning rate multiplied by gamma after every epoch
    class_weighting: bool = True  # MURA paper weighting: positives |N|/(|A|+|N|), negatives |A|/(|A|+|N|)
    early_stopping: int = 0  # patience in epochs on val AUC; 0 = off
    plateau_patience: int = 0  # divide the learning rate by 10 on a val-loss plateau; 0 = off
    steps_per_execution: int = 1  # >1 runs several batches per compiled call (faster on GPUs)
    seed: int = 42  # seeds the split, the weights init and augmentation
    threshold: float = 0.5  # probability above which an image/study is called abnormal
    # --- outputs ----------------------------------------------------------------------------
    runs_dir: str = "saved_models"  # where run folders are written
    run_name: str = ""  # empty = timestamp + backbone; an existing run with this name resumes
    mlflow: bool = True  # log the run to MLflow (MLFLOW_TRACKING_URI, else ./mlflow.db + ./mlruns)
    mlflow_experiment: str = "fracture"  # MLflow experiment name

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self, path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(Config)]


def _coerce(key: str, value, typ):
    """Turn `value` (a YAML scalar or string) into `typ`, or raise ConfigError naming the key."""
    if isinstance(value, str) and typ is not str:
        value = yaml.safe_load(value) if value.strip() else value
    origin = typing.get_origin(typ)
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            raise ValueError
        if typ is int:
            if isinstance(value, bool) or not float(value).is_integer():
                raise ValueError
            return int(value)
        if typ is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if typ is str:
            return "" if value is None else str(value)
        if origin is list:
            (item_type,) = typing.get_args(typ)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = [value]
            if isinstance(value, str):
                value = [v for v in value.split(",") if v.strip()]
            if not isinstance(value, (list, tuple)):
                raise ValueError
            return [_coerce(key, v, item_type) for v in value]
    except (TypeError, ValueError):
        pass
    else:
        raise ConfigError(f"config key '{key}' has unsupported type {typ}")
    name = getattr(typ, "__name__", str(typ))
    raise ConfigError(f"bad value for '{key}': {value!r} is not a valid {name}")


def _check_key(key: str) -> None:
    names = field_names()
    if key not in names:
        close = difflib.get_close_matches(key, names, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown config key '{key}'.{hint} Valid keys: {', '.join(names)}")


def update(cfg: Config, overrides: dict) -> Config:
    """A copy of `cfg` with `overrides` applied; unknown keys and bad values raise ConfigError."""
    hints = typing.get_type_hints(Config)
    values = cfg.to_dict()
    for key, value in overrides.items():
        _check_key(key)
        values[key] = _coerce(key, value, hints[key])
    out = Config(**values)
    validate(out)
    return out


def validate(cfg: Config) -> None:
    """Range checks that types alone cannot express."""
    checks = [
        (cfg.data_format in ("mura", "folders"), "data_format must be 'mura' or 'folders'"),
        (cfg.pooling in ("avg", "max"), "pooling must be 'avg' or 'max'"),
        (cfg.image_size >= 32, "image_size must be at least 32"),
        (cfg.batch_size >= 1, "batch_size must be at least 1"),
        (cfg.epochs >= 1, "epochs must be at least 1"),
        (0.0 < cfg.val_fraction < 1.0, "val_fraction must be between 0 and 1"),
        (cfg.learning_rate > 0, "learning_rate must be positive"),
        (0.0 <= cfg.momentum < 1.0, "momentum must be in [0, 1)"),
        (0.0 < cfg.gamma <= 1.0, "gamma must be in (0, 1]"),
        (0.0 <= cfg.dropout < 1.0, "dropout must be in [0, 1)"),
        (0.0 <= cfg.threshold <= 1.0, "threshold must be in [0, 1]"),
        (len(cfg.dense_units) == 3, "dense_units must list three layer sizes, e.g. [512,256,64]"),
        (all(u > 0 for u in cfg.dense_units), "dense_units must be positive"),
        (cfg.trainable_layers >= -1, "trainable_layers must be -1 (all) or a count >= 0"),
        (0.0 <= cfg.batchnorm_momentum < 1.0, "batchnorm_momentum must be in [0, 1)"),
        (cfg.steps_per_execution >= 1, "steps_per_execution must be at least 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(f"bad config: {message}")


def parse_overrides(items: list[str]) -> dict:
    """['epochs=2', 'backbone=ResNet50'] -> {'epochs': '2', 'backbone': 'ResNet50'}."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{item}' is not of the form key=value")
        _check_key(key.strip())
        out[key.strip()] = value
    return out


def load(path=None, overrides: dict | list[str] | None = None) -> Config:
    """Defaults, then the YAML file at `path`, then `overrides` (a dict or key=value strings)."""
    cfg = Config()
    if path:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of key: value")
        cfg = update(cfg, data)
    if overrides:
        if isinstance(overrides, list):
            overrides = parse_overrides(overrides)
        cfg = update(cfg, overrides)
    validate(cfg)
    return cfg
