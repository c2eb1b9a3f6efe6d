"""The single source of defaults: one dataclass, YAML files and `key=value` overrides.

This module imports no deep-learning framework, so a bad override fails in milliseconds,
before Keras or TensorFlow are loaded.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from fracture.errors import ConfigError
from fracture.fileio import atomic_write_text

log = logging.getLogger(__name__)

# Names a config may use, kept here (not looked up in Keras) so a typo fails at load time, in
# milliseconds, before any framework is imported. tests/test_preflight.py checks each against Keras.
# Each backbone -> the keras.applications module that defines it (its preprocessing and weights file).
BACKBONES = {
    "DenseNet121": "densenet", "DenseNet169": "densenet", "DenseNet201": "densenet",
    "ResNet50": "resnet", "ResNet101": "resnet", "ResNet152": "resnet",
    "ResNet50V2": "resnet_v2", "ResNet101V2": "resnet_v2", "ResNet152V2": "resnet_v2",
    **{f"EfficientNetB{i}": "efficientnet" for i in range(8)},
    "VGG16": "vgg16", "VGG19": "vgg19", "Xception": "xception", "InceptionV3": "inception_v3",
}
# keras.optimizers that take just a learning rate (Muon and schedule-free AdamW need more).
OPTIMIZERS = ("adadelta", "adafactor", "adagrad", "adam", "adamax", "adamw", "ftrl", "lion", "nadam",
              "rmsprop", "sgd")
# Element-wise keras.activations (softmax-like ones make no sense on a hidden layer).
ACTIVATIONS = ("celu", "elu", "exponential", "gelu", "hard_shrink", "hard_sigmoid", "hard_silu", "hard_swish",
               "hard_tanh", "leaky_relu", "linear", "log_sigmoid", "mish", "relu", "relu6", "selu", "sigmoid",
               "silu", "soft_shrink", "softplus", "softsign", "sparse_plus", "squareplus", "swish", "tanh",
               "tanh_shrink")
POOLINGS = ("avg", "max")
DATA_FORMATS = ("mura", "folders", "coco", "yolo")
FREEZE_BATCHNORM = ("auto", "true", "false")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")  # keras.mixed_precision dtype policy names
JIT_COMPILE = ("auto", "true", "false")
DISTRIBUTIONS = ("none", "mirrored", "multiworker", "data_parallel")
STUDY_TYPES = ("XR_ELBOW", "XR_FINGER", "XR_FOREARM", "XR_HAND", "XR_HUMERUS", "XR_SHOULDER", "XR_WRIST")
NO_WEIGHTS = ("none", "", "random", "scratch")  # weights= values that mean "random initialisation"
MAX_EPOCHS = 100_000  # far above any real schedule; 1e9 is a typo that would run for ever
MAX_LEARNING_RATE = 10.0  # above this every optimizer here diverges at once
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # one folder name: no separators, no '..'


@dataclass(frozen=True)
class Config:
    """Every default of the project, one per line. Frozen: a changed setting is a new Config
    (`config.update(cfg, {...})` or `dataclasses.replace`), so no function alters its caller's."""

    # --- data -------------------------------------------------------------------------------
    data_dir: str = "data/MURA-v1.1"  # MURA v1.1 folder (or its parent), or a class-folder root
    data_format: str = "mura"  # "mura" (MURA tree + CSVs), "folders" (<root>/{train,val,test}/<class>/), "coco" (FracAtlas) or "yolo" (Roboflow export); docs/data.md
    study_type: str = "XR_HUMERUS"  # one of the seven XR_* types, a comma list, or "all" (data_format=mura)
    positive_class: str = "fractured"  # class-folder name that means "fracture" (data_format=folders)
    fracture_classes: list[str] = field(default_factory=list)  # box classes that make an image abnormal (coco, yolo); empty = every class whose name contains "fracture"
    group_column: str = ""  # dataset.csv column of patient ids to split by (coco, yolo); empty = patient_id, patient or subject_id if present, else each image alone
    test_fraction: float = 0.2  # share of images (patients when known) held out for test when a coco/yolo dataset has no split of its own
    val_fraction: float = 0.2  # share of training *patients* held out for validation (as 1/n: 0.2 -> 1/5, 0.3 -> 1/3)
    folds: int = 5  # patient-level folds of `python -m fracture cv` (stratified by label)
    fold: int = -1  # validation fold of a cv run (0..folds-1); -1 = the val_fraction split
    cache_dir: str = "data/processed"  # decoded uint8 arrays, keyed by file list + image size
    max_pixels: int = 40_000_000  # images whose header claims more pixels are skipped unread (bombs)
    # --- model ------------------------------------------------------------------------------
    backbone: str = "DenseNet121"  # DenseNet121/169/201, ResNet50/101/152(V2), EfficientNetB0-7, VGG16/19, Xception, InceptionV3
    weights: str = "imagenet"  # "imagenet" (downloaded once into ~/.keras/models), "none", or an .h5 weights file path
    allow_random_weights: bool = False  # if ImageNet weights are missing offline: warn and start from scratch
    image_size: int = 224  # square model input, pixels
    pooling: str = "avg"  # global pooling after the backbone: "avg" or "max" (max finds small lesions faster)
    dense_units: list[int] = field(default_factory=lambda: [512, 256, 64])  # the three dense layers
    dense_activation: str = "relu"  # activation of the dense layers (a keras.activations name)
    dropout: float = 0.3  # after each dense layer
    trainable_layers: int = 60  # unfreeze the top N backbone layers; -1 = all
    batchnorm_momentum: float = 0.99  # moving-statistics momentum of the trainable BatchNorm layers
    freeze_batchnorm: str = "auto"  # "true": every BatchNorm layer stays in inference mode (its statistics and scale/offset fixed), even in the unfrozen top layers; "false": unfrozen BatchNorm layers train; "auto": true when weights is "imagenet" or a file, false for weights=none
    # --- augmentation (inside the model, active only in training) ---------------------------
    flip: bool = True  # random horizontal flip
    rotation: float = 30.0  # max rotation, degrees
    zoom: float = 0.1  # max zoom fraction
    translate: float = 0.05  # max translation fraction
    # --- training ---------------------------------------------------------------------------
    batch_size: int = 16  # images per training step
    epochs: int = 40  # training epochs
    optimizer: str = "adam"  # a keras.optimizers name: adam, adamw, sgd, rmsprop, nadam, lion ...
    learning_rate: float = 1e-4  # initial learning rate
    momentum: float = 0.0  # for sgd (Nesterov when > 0) and rmsprop; ignored by the others
    gamma: float = 0.99  # learning rate multiplied by gamma after every epoch
    class_weighting: bool = True  # MURA paper weighting: positives |N|/(|A|+|N|), negatives |A|/(|A|+|N|)
    early_stopping: int = 0  # patience in epochs on val AUC; 0 = off
    stop_at_val_auc: float = 0.0  # stop once an epoch's val AUC reaches this, after epochs_after_target more (the best epoch is kept); 0 = off
    epochs_after_target: int = 0  # epochs trained on after val AUC first reaches stop_at_val_auc
    lr_after_target: float = 1.0  # learning rate multiplied by this for those epochs (lets a from-scratch model settle)
    plateau_patience: int = 0  # divide the learning rate by 10 on a val-loss plateau; 0 = off
    steps_per_execution: int = 1  # >1 runs several batches per compiled call (faster on GPUs)
    precision: str = "float32"  # "float32", "mixed_bfloat16" (A100/H100, TPU) or "mixed_float16" (older GPUs; loss scaled); the output stays float32
    jit_compile: str = "auto"  # XLA-compile the train step: "auto" (Keras decides), "true" or "false"
    distribution: str = "none"  # "none", "mirrored" (TF, local GPUs), "multiworker" (TF, TF_CONFIG), "data_parallel" (JAX, all devices); docs/cluster.md
    verbose: str = "auto"  # Keras fit output: "auto" = progress bar in a terminal or notebook, one line per epoch in logs; or 0, 1, 2
    seed: int = 42  # seeds the split, the weights init and augmentation
    deterministic: bool = False  # true: deterministic kernels too, so a rerun on the same machine repeats history.csv and predictions exactly (slower; docs/reproducibility.md)
    threshold: float | str = 0.5  # probability above which an image/study is called abnormal, or "auto": chosen on validation studies
    target_sensitivity: float = 0.0  # threshold=auto: highest threshold reaching this validation sensitivity; 0 = Youden's J
    bootstrap_resamples: int = 2000  # 95% confidence intervals: patients resampled this often (seeded by seed); 0 = off
    # --- outputs ----------------------------------------------------------------------------
    runs_dir: str = "saved_models"  # where run folders are written
    run_name: str = ""  # empty = timestamp + backbone; an existing run with this name resumes
    mlflow: bool = True  # log the run to MLflow (MLFLOW_TRACKING_URI, else ./mlflow.db + ./mlruns)
    mlflow_experiment: str = "fracture"  # MLflow experiment name

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self, path) -> None:
        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


def key_comments() -> dict[str, str]:
    """Each field's line comment in the Config source: the one description of every key."""
    import inspect

    return dict(re.findall(r"^    (\w+): [^#\n]*#\s*(.*)$", inspect.getsource(Config), re.MULTILINE))


def markdown_table() -> str:
    """docs/config.md's key table, from the dataclass itself: each field's default and its line comment."""
    comments = key_comments()
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for name, value in Config().to_dict().items():
        shown = f'"{value}"' if isinstance(value, str) else repr(value)
        rows.append(f"| `{name}` | `{shown}` | {comments.get(name, '').replace('|', '&#124;')} |")
    return "\n".join(rows) + "\n"


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
        if typ is int:  # 40, not 40.0 or 4e1: a float here is a typo or a unit mistake
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError
            return int(value)
        if typ is float:
            if isinstance(value, bool) or not math.isfinite(float(value)):
                raise ValueError  # inf and nan: never a setting, and NaN compares false with every bound
            return float(value)
        if typ is str:
            return "" if value is None else str(value)
        if typ == float | str:  # a number, or one of the words validate() accepts (threshold: "auto")
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise ConfigError(f"bad value for '{key}': {value!r} is not a number in [0, 1] or 'auto'")
            return value.strip().lower() if isinstance(value, str) else float(value)
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
        values[key] = _canonical(key, _coerce(key, value, hints[key]))
    out = Config(**values)
    validate(out)
    return out


# key -> the names it accepts; a value is matched case-insensitively and stored as spelled here
NAMED = {"backbone": BACKBONES, "optimizer": OPTIMIZERS, "dense_activation": ACTIVATIONS, "pooling": POOLINGS,
         "data_format": DATA_FORMATS, "precision": PRECISIONS, "jit_compile": JIT_COMPILE,
         "distribution": DISTRIBUTIONS, "freeze_batchnorm": FREEZE_BATCHNORM}


def _canonical(key: str, value):
    """'densenet121' -> 'DenseNet121', 'Adam' -> 'adam'; anything else is left for validate()."""
    if key in NAMED and isinstance(value, str):
        by_lower = {name.lower(): name for name in NAMED[key]}
        return by_lower.get(value.strip().lower(), value)
    if key == "study_type" and isinstance(value, str):
        return ",".join(s.strip().upper() for s in value.split(",") if s.strip()) if value.lower() != "all" else "all"
    return value


def _typo_distance(a: str, b: str) -> int:
    """Edits (insert, delete, substitute, swap two neighbours) from a to b: 'adma' is 1 from 'adam'."""
    a, b = a.lower(), b.lower()
    rows = [list(range(len(b) + 1))]
    for i in range(1, len(a) + 1):
        row = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            row[j] = min(rows[-1][j] + 1, row[j - 1] + 1, rows[-1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], rows[-2][j - 2] + 1)
        rows.append(row)
    return rows[-1][-1]


def _check_name(key: str, value: str, allowed) -> None:
    if value in allowed:
        return
    close = difflib.get_close_matches(value, allowed, n=3, cutoff=0.6)
    close.sort(key=lambda name: _typo_distance(value, name))  # stable: difflib's order breaks ties
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise ConfigError(f"unknown {key} '{value}'.{hint} Choose one of: {', '.join(allowed)}")


def parse_study_types(study_type: str) -> tuple[str, ...]:
    """'XR_HUMERUS', 'xr_wrist,XR_HAND' or 'all' -> the study types; an unknown one is a ConfigError."""
    if study_type.strip().lower() == "all":
        return STUDY_TYPES
    wanted = tuple(s.strip().upper() for s in study_type.split(",") if s.strip())
    if not wanted:
        raise ConfigError(f"study_type is empty: use one of {', '.join(STUDY_TYPES)}, a comma list, or 'all'")
    for name in wanted:
        _check_name("study_type", name, STUDY_TYPES + ("all",))
    return wanted


def check_run_name(name: str) -> None:
    """A run name is one folder under runs_dir: '../x' or 'a/b' would write elsewhere."""
    if name and (not RUN_NAME.fullmatch(name) or len(name) > 200):
        raise ConfigError(f"bad run_name {name!r}: use letters, digits, '.', '_' and '-' only, starting with a "
                          "letter or digit (it names one folder inside runs_dir)")


def validate(cfg: Config) -> None:
    """Names and ranges that types alone cannot express; imports no framework."""
    for key, allowed in NAMED.items():
        _check_name(key, getattr(cfg, key), allowed)
    parse_study_types(cfg.study_type)
    check_run_name(cfg.run_name)
    checks = [
        (cfg.image_size >= 32, "image_size must be at least 32"),
        (cfg.batch_size >= 1, "batch_size must be at least 1"),
        (1 <= cfg.epochs <= MAX_EPOCHS, f"epochs must be between 1 and {MAX_EPOCHS}"),
        (0.0 < cfg.val_fraction < 1.0, "val_fraction must be between 0 and 1"),
        (0.0 < cfg.test_fraction < 1.0, "test_fraction must be between 0 and 1"),
        (cfg.folds >= 2, "folds must be at least 2"),
        (-1 <= cfg.fold < cfg.folds, "fold must be -1 (the val_fraction split) or a fold in 0..folds-1"),
        (0 < cfg.learning_rate <= MAX_LEARNING_RATE,
         f"learning_rate must be in (0, {MAX_LEARNING_RATE}] (typical: 1e-5 to 1e-2)"),
        (0.0 <= cfg.momentum < 1.0, "momentum must be in [0, 1)"),
        (0.0 < cfg.gamma <= 1.0, "gamma must be in (0, 1]"),
        (0.0 <= cfg.dropout < 1.0, "dropout must be in [0, 1)"),
        (cfg.threshold == "auto" or isinstance(cfg.threshold, (int, float)) and not isinstance(cfg.threshold, bool)
         and 0.0 <= cfg.threshold <= 1.0,
         f"threshold must be a number in [0, 1] or 'auto' (chosen on validation), not {cfg.threshold!r}"),
        (0.0 <= cfg.target_sensitivity <= 1.0, "target_sensitivity must be in [0, 1] (0 = Youden's J)"),
        (cfg.bootstrap_resamples >= 0, "bootstrap_resamples must be 0 (no intervals) or a count"),
        (0.0 <= cfg.stop_at_val_auc <= 1.0, "stop_at_val_auc must be in [0, 1] (0 = off)"),
        (cfg.epochs_after_target >= 0, "epochs_after_target must be 0 or more"),
        (0.0 < cfg.lr_after_target <= 1.0, "lr_after_target must be in (0, 1]"),
        (len(cfg.dense_units) == 3, "dense_units must list three layer sizes, e.g. [512,256,64]"),
        (all(u > 0 for u in cfg.dense_units), "dense_units must be positive"),
        (cfg.trainable_layers >= -1, "trainable_layers must be -1 (all) or a count >= 0"),
        (0.0 <= cfg.batchnorm_momentum < 1.0, "batchnorm_momentum must be in [0, 1)"),
        (cfg.steps_per_execution >= 1, "steps_per_execution must be at least 1"),
        (cfg.verbose in ("auto", "0", "1", "2"), "verbose must be auto, 0, 1 or 2"),
    ]
    for f in dataclasses.fields(cfg):  # a Config built in code skips _coerce: inf and nan stop here too
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"bad config: {f.name} must be a finite number, not {value}")
    for ok, message in checks:
        if not ok:
            raise ConfigError(f"bad config: {message}")


def check_random_backbone(cfg: Config) -> None:
    """Refuse a random backbone that stays partly frozen: weights=none with trainable_layers != -1
    trains the dense head (and the top layers) on features that are noise and never learn."""
    if cfg.weights.strip().lower() in NO_WEIGHTS and cfg.trainable_layers != -1:
        raise ConfigError(f"weights={cfg.weights.strip() or 'none'} starts from random weights, so "
                          f"trainable_layers={cfg.trainable_layers} would keep part of a random backbone frozen; "
                          "set trainable_layers=-1 (train every layer)")


def parse_overrides(items: list[str]) -> dict:
    """['epochs=2', 'backbone=ResNet50'] -> {'epochs': '2', 'backbone': 'ResNet50'}."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{item}' is not of the form key=value")
        _check_key(key.strip())
        if key.strip() in out:
            raise ConfigError(f"config key '{key.strip()}' is given twice on the command line "
                              f"({out[key.strip()]!r} and {value!r}): keep one")
        out[key.strip()] = value
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice in one mapping is an error (PyYAML keeps the last)."""


def _unique_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(f"config key '{key}' is given twice (line {key_node.start_mark.line + 1}): keep one")
        seen.add(key)
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def read_yaml(path: Path):
    """A config file's content: UTF-8 YAML with no key given twice, or a ConfigError naming the file."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start}): pass a YAML file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc


def load(path=None, overrides: dict | list[str] | None = None, stored: bool = False,
         frozen_random_backbone: bool = False) -> Config:
    """Defaults, then the YAML file at `path`, then `overrides` (a dict or key=value strings).

    stored=True reads a run folder's own config.yaml, written by an older or newer version: a key
    this version does not know is a warning that names it (and is ignored), so old runs keep loading.
    A key the user writes (a --config file, an override) that is unknown stays an error.
    A config the user writes is also refused when it freezes a random backbone (check_random_backbone);
    frozen_random_backbone=True lets benchmarks and tests that time or test the freezing itself
    (a step's cost does not depend on the weights' values) build one on purpose.
    """
    cfg = Config()
    if path:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        data = read_yaml(path) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of key: value")
        if stored:
            unknown = sorted(set(data) - set(field_names()))
            if unknown:
                log.warning("%s has keys this version of fracture does not know, ignored: %s", path,
                            ", ".join(unknown))
            data = {k: v for k, v in data.items() if k not in unknown}
        cfg = update(cfg, data)
    if overrides:
        if isinstance(overrides, list):
            overrides = parse_overrides(overrides)
        cfg = update(cfg, overrides)
    validate(cfg)
    if not (stored or frozen_random_backbone):
        check_random_backbone(cfg)
    return cfg
