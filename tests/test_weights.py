"""Backbone weights and preprocessing: ImageNet weights downloaded for real (from a loopback HTTP
server this file starts: no test reaches the internet), every failure one clear WeightsError, and
preprocessing layers that reproduce each family's `preprocess_input` with built-in Keras layers."""

import hashlib
import http.server
import re
import socket
import threading
import time
from types import SimpleNamespace

import h5py
import keras
import numpy as np
import pytest

from fracture import config, model, weights
from fracture.cli import main
from fracture.errors import WeightsError
from fracture.config import BACKBONES
from fracture.model import build_model
from fracture.weights import imagenet_weights_file
from fracture.testing import free_port
from tests.conftest import tiny_config

TINY = dict(weights="none", image_size=32, dense_units=[16, 8, 4])


def cfg_of(**overrides):
    return config.load(overrides=dict(TINY, **overrides), frozen_random_backbone=True)


# --------------------------------------------------------------------------------------------
# where Keras's weights come from
# --------------------------------------------------------------------------------------------
# Spot values copied from keras/src/applications/*.py (Keras 3.15): one per way Keras stores them.
KNOWN_MD5 = {"DenseNet121": "30ee3e1110167f948a6b9946edeeb738",  # inline in densenet.py
             "VGG16": "6d6bbae143d832006294945121d1f1fc",  # inline in vgg16.py
             "ResNet50V2": "fac2f116257151a9d068a22e544a4917",  # resnet.WEIGHTS_HASHES
             "EfficientNetB0": "50bc09e76180e00e4465e1a485ddc09d"}  # efficientnet.WEIGHTS_HASHES


def test_every_backbone_has_a_url_and_md5_from_keras(monkeypatch):
    monkeypatch.setattr(weights, "IMAGENET_SOURCES", {})  # derive afresh, whatever other tests cached
    sources = {backbone: weights.imagenet_source(backbone) for backbone in BACKBONES}
    for backbone, (url, md5) in sources.items():
        assert re.fullmatch(r"https://storage\.googleapis\.com/\S+/" + re.escape(imagenet_weights_file(backbone)),
                            url), backbone
        assert re.fullmatch(r"[0-9a-f]{32}", md5), backbone
    assert len({md5 for _, md5 in sources.values()}) == len(BACKBONES)  # no hash picked twice
    assert {b: sources[b][1] for b in KNOWN_MD5} == KNOWN_MD5


# --------------------------------------------------------------------------------------------
# a loopback server with a real Keras-applications weights file
# --------------------------------------------------------------------------------------------
class WeightsHandler(http.server.BaseHTTPRequestHandler):
    """GET /<name>: the file; GET /truncated/<name>: announces the full length, sends half, hangs up."""

    files: dict = {}
    requests: list = []

    def do_GET(self):
        self.requests.append(self.path)
        name = self.path.rsplit("/", 1)[-1]
        if name not in self.files:
            self.send_error(404)
            return
        body = self.files[name]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:len(body) // 2] if self.path.startswith("/truncated/") else body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def weights_server(tmp_path_factory):
    """VGG16's no-top weights (random, 32 px) in the legacy HDF5 layout Keras's ImageNet files use,
    served on a free 127.0.0.1 port."""
    from keras.src.legacy.saving import legacy_h5_format  # writes the layout keras.applications loads

    name = imagenet_weights_file("VGG16")
    path = tmp_path_factory.mktemp("served") / name
    reference = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, reference)
    body = path.read_bytes()
    handler = type("Handler", (WeightsHandler,), {"files": {name: body}, "requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield SimpleNamespace(url=f"http://127.0.0.1:{server.server_port}", name=name, path=path, body=body,
                              md5=hashlib.md5(body).hexdigest(), requests=handler.requests)
    finally:
        server.shutdown()
        server.server_close()


def text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)  # h5py gives either, by version


def stored_weights(path) -> dict[str, list[np.ndarray]]:
    """Layer name -> arrays (layers with weights), read straight from the HDF5 file (Keras's legacy layout)."""
    out = {}
    with h5py.File(path, "r") as f:
        for layer in map(text, f.attrs["layer_names"]):
            names = f[layer].attrs["weight_names"]
            if len(names):
                out[layer] = [np.asarray(f[layer][text(w)]) for w in names]
    return out


def test_imagenet_weights_download_once_into_the_keras_cache(weights_server, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setitem(weights.IMAGENET_SOURCES, "VGG16", (f"{weights_server.url}/{weights_server.name}",
                                                          weights_server.md5))
    weights_server.requests.clear()
    built = build_model(cfg_of(backbone="VGG16", weights="imagenet"))

    expected = stored_weights(weights_server.path)
    assert len(expected) == 13  # VGG16's conv layers
    for layer, arrays in expected.items():
        for got, want in zip(built.get_layer(layer).get_weights(), arrays, strict=True):
            np.testing.assert_array_equal(got, want, err_msg=layer)
    cached = tmp_path / "models" / weights_server.name
    assert [p.name for p in cached.parent.iterdir()] == [cached.name]  # no download folder left behind
    assert cached.read_bytes() == weights_server.body

    build_model(cfg_of(backbone="VGG16", weights="imagenet"))  # from the cache: no second request
    assert weights_server.requests == [f"/{weights_server.name}"]


@pytest.mark.parametrize("failure", ["wrong md5", "HTTP 404", "truncated", "connection refused", "stalled"])
def test_a_failed_download_is_one_clear_error_fast_and_leaves_no_file(failure, weights_server, tmp_path,
                                                                      monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    base, path, md5 = weights_server.url, f"/{weights_server.name}", weights_server.md5
    silent = socket.socket()
    if failure == "wrong md5":
        md5 = "0" * 32
    elif failure == "HTTP 404":
        path = "/missing/nothing.h5"
    elif failure == "truncated":
        path = f"/truncated/{weights_server.name}"
    elif failure == "connection refused":
        base = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    else:  # the connection opens (listen backlog) and then nothing ever answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        base = f"http://127.0.0.1:{silent.getsockname()[1]}"
        monkeypatch.setattr(weights, "DOWNLOAD_TIMEOUT_S", 1)
    url = base + path
    monkeypatch.setitem(weights.IMAGENET_SOURCES, "VGG16", (url, md5))

    started = time.perf_counter()
    with silent, pytest.raises(WeightsError) as err:
        build_model(cfg_of(backbone="VGG16", weights="imagenet"))
    assert time.perf_counter() - started < 10
    message = str(err.value)
    assert weights_server.name in message and f"{tmp_path / 'models'}/" in message and url in message
    assert "weights=none" in message
    assert not list((tmp_path / "models").iterdir())  # nothing half-written in the cache


def test_failed_download_with_allow_random_weights_warns_and_builds(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setitem(weights.IMAGENET_SOURCES, "VGG16", (f"http://127.0.0.1:{free_port()}/w.h5", "0" * 32))
    with caplog.at_level("WARNING", logger="fracture.weights"):
        built = build_model(cfg_of(backbone="VGG16", weights="imagenet", allow_random_weights=True))
    assert built.output_shape == (None, 1)
    assert "random initialisation" in caplog.text and imagenet_weights_file("VGG16") in caplog.text


def test_train_cli_offline_prints_one_error_line(train_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    url = f"http://127.0.0.1:{free_port()}/{imagenet_weights_file('VGG16')}"
    monkeypatch.setitem(weights.IMAGENET_SOURCES, "VGG16", (url, "0" * 32))
    cfg = tiny_config(tmp_path, train_data, backbone="VGG16", weights="imagenet")
    overrides = [f"{key}={value}" for key, value in cfg.to_dict().items()
                 if key in ("data_dir", "runs_dir", "cache_dir", "backbone", "weights", "image_size", "mlflow")]
    assert main(["train", *overrides]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot download the ImageNet weights for VGG16") and url in err
    assert "Traceback" not in err and err.count("\n") == 1
    # The model is built before the run folder is created: runs_dir holds only the run lock, which
    # stays beside the run folder by design (fracture/runlock.py), empty once released.
    left = list((tmp_path / "runs").iterdir())
    assert [p.name for p in left if not (p.name.startswith(".") and p.name.endswith(".lock"))] == []
    assert all(p.is_file() and p.read_text() == "" for p in left)


# --------------------------------------------------------------------------------------------
# preprocessing: built-in layers equal to each family's preprocess_input
# --------------------------------------------------------------------------------------------
ONE_PER_FAMILY = {"densenet": "DenseNet121", "resnet": "ResNet50", "resnet_v2": "ResNet50V2",
                  "efficientnet": "EfficientNetB0", "vgg16": "VGG16", "vgg19": "VGG19", "xception": "Xception",
                  "inception_v3": "InceptionV3"}


def test_every_backbone_module_has_a_preprocessing_mode():
    assert set(BACKBONES.values()) == set(ONE_PER_FAMILY) == set(model.PREPROCESS_MODES)


@pytest.mark.parametrize("module", sorted(ONE_PER_FAMILY))
def test_preprocessing_layers_equal_keras_preprocess_input(module):
    cfg = cfg_of(backbone=ONE_PER_FAMILY[module])
    inputs = keras.Input((32, 32, 1))
    probe = keras.Model(inputs, model._preprocessing(inputs, cfg))  # the exact layers build_model uses
    assert probe.layers[-1].name == "backbone_preprocess"
    assert all(type(layer).__module__.startswith("keras.") for layer in probe.layers)

    gray = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 1)).astype("float32")
    expected = getattr(keras.applications, module).preprocess_input(np.repeat(gray, 3, axis=-1))
    got = keras.ops.convert_to_numpy(probe(gray, training=False))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_a_corrupt_cached_file_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    cached = tmp_path / "models" / imagenet_weights_file("VGG16")
    cached.parent.mkdir()
    cached.write_bytes(b"<html>a captive portal, not HDF5</html>")
    with pytest.raises(WeightsError, match=f"cannot read the weights file {re.escape(str(cached))}.*Delete or replace"):
        build_model(cfg_of(backbone="VGG16", weights="imagenet"))
