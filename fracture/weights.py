"""Backbone weights: ImageNet no-top files downloaded and cached as Keras does, and one clear error when missing.

`resolve_weights(cfg)` turns the `weights` key into what a keras.applications constructor takes:
weights=imagenet is the file in Keras's cache ($KERAS_HOME/models), downloaded on first use from
the URL and md5 Keras's own applications modules give; weights=none is random initialisation;
anything else is a weights file. A download that cannot finish (offline, stalled, wrong hash)
becomes one WeightsError that says where to put the file by hand.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import inspect
import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path

import keras

from fracture.config import BACKBONES, NO_WEIGHTS  # backbone name -> keras.applications module
from fracture.errors import WeightsError

log = logging.getLogger(__name__)


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
