"""The model: raw grayscale pixels in, fracture probability out, as one flat functional graph.

raw pixels -> [augmentation, training only] -> gray->RGB -> backbone preprocess_input
-> backbone layers (inlined, not a nested submodel) -> global pool -> 3 dense -> logit -> sigmoid

Because preprocessing and augmentation are layers of the saved model, a `model.keras` takes the
same raw pixels in training, evaluation, the CLI and the web app. Because the graph is flat,
every backbone layer can be reached by name (for CAMs) on every Keras backend.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import keras

from fracture import config as config_lib
from fracture import resume
from fracture.config import BACKBONES  # backbone name -> keras.applications module (preprocess_input, weights)
from fracture.errors import FractureError, WeightsError

log = logging.getLogger(__name__)

# Names of the layers this module adds in front of the backbone and behind it.
PREPROCESS_LAYERS = ("augment_flip", "augment_rotation", "augment_zoom", "augment_translation",
                     "gray_to_rgb", "backbone_preprocess")
LOGIT_LAYER = "logit"
OUTPUT_LAYER = "probability"
POOL_LAYER = "global_pool"


def imagenet_weights_file(backbone: str) -> str:
    """File name Keras caches the no-top ImageNet weights of `backbone` under."""
    name = backbone.lower()
    if name.startswith("efficientnetb"):
        return f"{name}_notop.h5"
    if name == "inceptionv3":
        name = "inception_v3"
    return f"{name}_weights_tf_dim_ordering_tf_kernels_notop.h5"


def keras_models_dir() -> Path:
    """Where Keras caches application weights: $KERAS_HOME/models, else ~/.keras/models.
    Read at call time (Keras reads KERAS_HOME once, at import), so both agree in a fresh process."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras").expanduser() / "models"


# --------------------------------------------------------------------------------------------
# ImageNet weights: where Keras downloads them from
# --------------------------------------------------------------------------------------------
# backbone -> (origin URL, md5) of its no-top ImageNet weights. Filled on first use from Keras's own
# applications modules, so URL and hash always match the Keras version installed; tests put a
# loopback server here.
IMAGENET_SOURCES: dict[str, tuple[str, str]] = {}
DOWNLOAD_TIMEOUT_S = 30  # per socket operation: a stalled server fails in seconds, a slow one still finishes


def imagenet_source(backbone: str) -> tuple[str, str]:
    """(origin URL, md5) of the no-top ImageNet weights file, as Keras's applications module has them."""
    if backbone not in IMAGENET_SOURCES:
        IMAGENET_SOURCES[backbone] = _keras_imagenet_source(backbone)
    return IMAGENET_SOURCES[backbone]


def _keras_imagenet_source(backbone: str) -> tuple[str, str]:
    import importlib

    family = BACKBONES[backbone]
    file_name = imagenet_weights_file(backbone)
    if family in ("resnet", "resnet_v2", "efficientnet"):
        # Keras keeps these in a WEIGHTS_HASHES table ((top, no-top) md5s); ResNetV2 uses resnet's.
        holder = "efficientnet" if family == "efficientnet" else "resnet"
        module = importlib.import_module(f"keras.src.applications.{holder}")
        key = backbone.lower().removeprefix("efficientnet")
        return module.BASE_WEIGHTS_PATH + file_name, module.WEIGHTS_HASHES[key][1]
    module = importlib.import_module(f"keras.src.applications.{family}")
    constant = f"{backbone.upper()}_WEIGHT_PATH_NO_TOP" if family == "densenet" else "WEIGHTS_PATH_NO_TOP"
    url = getattr(module, constant)
    if not url.endswith("/" + file_name):
        raise ValueError(f"keras.src.applications.{family}.{constant} = {url} does not name {file_name}")
    # These modules write the hash inline, in their get_file(file_name, ..., file_hash=...) call.
    return url, _file_hash_in_source(module, file_name)


def _file_hash_in_source(module, file_name: str) -> str:
    """The `file_hash=` literal of the `get_file("<file_name>", ...)` call in a Keras module's source."""
    import ast
    import inspect

    for node in ast.walk(ast.parse(inspect.getsource(module))):
        if (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
                and node.args[0].value == file_name):
            for keyword in node.keywords:
                if keyword.arg == "file_hash" and isinstance(keyword.value, ast.Constant):
                    return keyword.value.value
    raise ValueError(f"no get_file('{file_name}', ..., file_hash=...) call in {module.__name__}")


def download_imagenet(backbone: str) -> Path:
    """The cached no-top ImageNet weights file, downloaded with Keras's `get_file` (md5-checked) if needed.

    The download goes to a temporary folder beside the cache and is moved in only once complete and
    verified: an interrupted, truncated or wrong file never sits in the cache under the real name.
    """
    import shutil
    import tempfile

    target = keras_models_dir() / imagenet_weights_file(backbone)
    if target.is_file():
        return target
    try:
        url, md5 = imagenet_source(backbone)
    except (AttributeError, KeyError, OSError, TypeError, ValueError) as exc:
        raise WeightsError(_missing_weights_message(backbone, target, None,
                                                    f"cannot read its URL from Keras: {exc}")) from exc
    staging = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".download-", dir=target.parent))
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            path = keras.utils.get_file(target.name, url, file_hash=md5, cache_subdir=str(staging))
        os.replace(path, target)
    except Exception as exc:  # get_file raises bare Exception for URL errors, ValueError for a bad hash
        reason = str(exc).replace(f" on {url}", "").strip() or type(exc).__name__  # the URL comes later
        raise WeightsError(_missing_weights_message(backbone, target, url, reason)) from exc
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    log.info("ImageNet weights for %s saved to %s", backbone, target)
    return target


def _missing_weights_message(backbone: str, target: Path, url: str | None, reason: str) -> str:
    where = f"from {url}" if url else "from https://storage.googleapis.com/tensorflow/keras-applications/"
    return (f"cannot download the ImageNet weights for {backbone} ({reason}). Download '{target.name}' {where} "
            f"on a machine with internet and place it in {target.parent}/, or pass weights=/path/to/{target.name}, "
            "or weights=none to train from scratch (allow_random_weights=true makes this a warning instead of "
            "an error).")


@contextlib.contextmanager
def _socket_timeout(seconds: float):
    """Keras's get_file (urlretrieve) takes no timeout: without one a silent server blocks forever."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def resolve_weights(cfg) -> str | None:
    """'imagenet' -> the cached weights file (downloaded on first use), 'none' -> None, else a checked path."""
    from fracture.preflight import NO_WEIGHTS

    choice = cfg.weights.strip()
    if choice.lower() in NO_WEIGHTS:
        return None
    if choice.lower() == "imagenet":
        try:
            return str(download_imagenet(cfg.backbone))
        except WeightsError as exc:
            if not cfg.allow_random_weights:
                raise
            frozen = (f" trainable_layers={cfg.trainable_layers} keeps the rest of this random backbone frozen: "
                      "pass trainable_layers=-1 to train it all.") if cfg.trainable_layers != -1 else ""
            log.warning("%s Continuing from random initialisation.%s", exc, frozen)
            return None
    path = Path(choice).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path} (use weights=imagenet, weights=none or a file path)")
    return str(path)


# --------------------------------------------------------------------------------------------
# preprocessing layers
# --------------------------------------------------------------------------------------------
# Which `preprocess_input` each keras.applications module applies (keras/src/applications/imagenet_utils.py).
PREPROCESS_MODES = {"densenet": "torch", "resnet": "caffe", "vgg16": "caffe", "vgg19": "caffe",
                    "resnet_v2": "tf", "xception": "tf", "inception_v3": "tf", "efficientnet": "none"}
TORCH_MEAN, TORCH_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # RGB, on 0-1 pixels
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def backbone_preprocess_layer(module: str, name: str = "backbone_preprocess") -> keras.layers.Layer:
    """The backbone's `preprocess_input` for gray replicated to RGB, as one built-in Keras layer.

    On three equal channels every mode is a per-channel affine map, so a Normalization (or Rescaling)
    reproduces it exactly, and a saved model loads with plain Keras, no `import fracture`:
      torch (DenseNet):          (x/255 - mean) / std       = (x - 255 mean) / (255 std)
      caffe (VGG, ResNet v1):    RGB->BGR, minus BGR means  = channel c: x - mean_bgr[c] (channels equal)
      tf (ResNetV2, Xception, InceptionV3): x/127.5 - 1
      none (EfficientNet: its own Rescaling/Normalization are inside the backbone)
    """
    mode = PREPROCESS_MODES[module]
    if mode == "torch":
        return keras.layers.Normalization(mean=[255.0 * m for m in TORCH_MEAN],
                                          variance=[(255.0 * s) ** 2 for s in TORCH_STD], name=name)
    if mode == "caffe":
        return keras.layers.Normalization(mean=list(CAFFE_MEAN_BGR), variance=[1.0, 1.0, 1.0], name=name)
    if mode == "tf":
        return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name=name)
    return keras.layers.Identity(name=name)


@keras.saving.register_keras_serializable(package="fracture")
class BackbonePreprocess(keras.layers.Layer):
    """The custom layer models saved before the built-in preprocessing used. Kept registered so
    those old `model.keras` files still load (after `import fracture`); new models do not use it."""

    def __init__(self, module: str, **kwargs):
        super().__init__(**kwargs)
        self.module = module
        self._fn = getattr(keras.applications, module).preprocess_input

    def call(self, x):
        return self._fn(x)

    def get_config(self):
        return {**super().get_config(), "module": self.module}


def _preprocessing(x, cfg):
    """Augmentation (random layers are no-ops unless training=True) and backbone preprocessing."""
    if cfg.flip:
        x = keras.layers.RandomFlip("horizontal", seed=cfg.seed, name="augment_flip")(x)
    if cfg.rotation:
        x = keras.layers.RandomRotation(cfg.rotation / 360.0, fill_mode="constant", seed=cfg.seed,
                                        name="augment_rotation")(x)
    if cfg.zoom:
        x = keras.layers.RandomZoom(cfg.zoom, fill_mode="constant", seed=cfg.seed, name="augment_zoom")(x)
    if cfg.translate:
        x = keras.layers.RandomTranslation(cfg.translate, cfg.translate, fill_mode="constant",
                                           seed=cfg.seed, name="augment_translation")(x)
    x = keras.layers.Concatenate(name="gray_to_rgb")([x, x, x])
    return backbone_preprocess_layer(BACKBONES[cfg.backbone])(x)


@contextlib.contextmanager
def dtype_policy(name: str):
    """Build layers under the keras.mixed_precision policy `name`, then restore the one before:
    the policy is stored in each layer (and in model.keras), so no global setting outlives the build."""
    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)


def build_model(cfg) -> keras.Model:
    """The flat model of the module doc, its layers computing in cfg.precision (variables stay
    float32; the logit and the probability are float32, so scores and the loss keep full precision)."""
    with dtype_policy(cfg.precision):
        model = _build_model(cfg)
    allow_jit_on_jax(model)
    return model


def allow_jit_on_jax(model) -> None:
    """Keras marks RandomRotation, RandomZoom and RandomTranslation `supports_jit = False` (for
    TensorFlow's image ops), which turns jit_compile off for the whole model on every backend: on
    JAX the train step then runs op by op, slowly, and under keras.distribution.DataParallel it
    hangs at the first all-reduce (docs/cluster.md). Their JAX code is jax.numpy and traces
    under jax.jit, so on JAX they are marked jittable."""
    if keras.backend.backend() == "jax":
        for layer in model._flatten_layers():
            layer.supports_jit = True


def _build_model(cfg) -> keras.Model:
    if cfg.backbone not in BACKBONES:
        raise FractureError(f"unknown backbone '{cfg.backbone}'; choose one of {', '.join(BACKBONES)}")
    weights = resolve_weights(cfg)
    size = cfg.image_size
    inputs = keras.Input((size, size, 1), name="image")
    x = _preprocessing(inputs, cfg)
    constructor = getattr(keras.applications, cfg.backbone)
    try:
        # input_tensor inlines the backbone's layers into our graph: one flat model.
        backbone = constructor(include_top=False, weights=weights, input_tensor=x)
    except ValueError as exc:
        raise FractureError(f"cannot build {cfg.backbone} at image_size={size} with weights={cfg.weights}: {exc}")
    except OSError as exc:  # h5py: a truncated or non-HDF5 file
        raise WeightsError(f"cannot read the weights file {weights}: {exc}. Delete or replace it "
                           "(weights=imagenet downloads it again when it is missing from the cache).") from exc
    backbone_layers = [layer for layer in backbone.layers
                       if layer.name not in PREPROCESS_LAYERS and not isinstance(layer, keras.layers.InputLayer)]
    set_trainable(backbone_layers, cfg.trainable_layers)
    if freeze_batchnorm(cfg, weights):
        # Keras's transfer-learning guide: fine-tuning with BatchNorm layers in training mode lets
        # batches of 16 overwrite statistics learnt on millions of images, and the first updates
        # wreck the pretrained features. A frozen BatchNorm runs in inference mode in Keras 3.
        for layer in backbone_layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
    for layer in backbone_layers:
        # Keras's 0.99 averages over ~100 steps: from scratch with a high learning rate the weights
        # move faster than that, the inference-mode statistics lag, and validation swings between
        # good and chance from one epoch to the next. A lower momentum follows the weights.
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable:
            layer.momentum = cfg.batchnorm_momentum

    pooling = keras.layers.GlobalMaxPooling2D if cfg.pooling == "max" else keras.layers.GlobalAveragePooling2D
    x = pooling(name=POOL_LAYER)(backbone.output)
    for i, units in enumerate(cfg.dense_units, start=1):
        x = keras.layers.Dense(units, activation=cfg.dense_activation, name=f"dense_{i}")(x)
        if cfg.dropout:
            x = keras.layers.Dropout(cfg.dropout, seed=cfg.seed, name=f"dropout_{i}")(x)
    logit = keras.layers.Dense(1, name=LOGIT_LAYER, dtype="float32")(x)
    probability = keras.layers.Activation("sigmoid", name=OUTPUT_LAYER, dtype="float32")(logit)
    model = keras.Model(inputs, probability, name=f"fracture_{cfg.backbone}")
    trainable, frozen = count_params(model)
    log.info("%s: %s trainable / %s frozen parameters (top %s backbone layers unfrozen)",
             model.name, f"{trainable:,}", f"{frozen:,}", "all" if cfg.trainable_layers < 0 else cfg.trainable_layers)
    return model


def freeze_batchnorm(cfg, weights) -> bool:
    """cfg.freeze_batchnorm resolved: "auto" is true exactly when the backbone starts from
    pretrained weights (`weights`, the resolved file: ImageNet or a weights file; not None, which
    is weights=none or a failed download with allow_random_weights)."""
    if cfg.freeze_batchnorm == "auto":
        return weights is not None
    return cfg.freeze_batchnorm == "true"


def set_trainable(layers, top_n: int) -> None:
    """Unfreeze the top `top_n` layers (-1 = all). A frozen BatchNormalization runs in inference
    mode in Keras 3, so its moving statistics stay those of the pretrained weights."""
    cut = 0 if top_n < 0 else max(0, len(layers) - top_n)
    for i, layer in enumerate(layers):
        layer.trainable = i >= cut


def count_params(model) -> tuple[int, int]:
    trainable = sum(int(w.numpy().size) if hasattr(w, "numpy") else int(keras.ops.size(w))
                    for w in model.trainable_weights)
    frozen = sum(int(keras.ops.size(w)) for w in model.non_trainable_weights)
    return trainable, frozen


def summary_text(model) -> str:
    """`model.summary()` as plain text (the run folder's model_summary.txt): layers, shapes, counts."""
    captured = []
    # 80 columns: Keras captures through a rich console as wide as the terminal (80 when there is
    # none) and crops a wider table.
    model.summary(line_length=80, print_fn=lambda text, line_break=True: captured.append(text))
    return "\n".join(captured).rstrip() + "\n"


def unfrozen_layers(model) -> list[str]:
    """Names of the backbone layers that train (those holding weights)."""
    head = {POOL_LAYER, LOGIT_LAYER, OUTPUT_LAYER}
    return [layer.name for layer in model.layers
            if layer.trainable and layer.weights and layer.name not in head and not layer.name.startswith(("dense_",))]


# --------------------------------------------------------------------------------------------
# runs on disk
# --------------------------------------------------------------------------------------------
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
    return max(complete, key=_completed_at)


def _completed_at(run_dir: Path) -> float:
    marker = run_dir / resume.MARKER
    return (marker if marker.is_file() else run_dir / "model.keras").stat().st_mtime


def load_run(path=None, runs_dir="saved_models") -> Run:
    from fracture import portable

    path = find_run(path, runs_dir)
    cfg = portable.resolve(config_lib.load(path / "config.yaml", stored=True), path)
    metrics_file = path / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    return Run(path=path, model=load_model(path / "model.keras"), config=cfg, metrics=metrics)
