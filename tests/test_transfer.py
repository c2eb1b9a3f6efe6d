"""Fine-tuning from a weights file of our own: a model built with weights=<file> holds exactly the
file's arrays (read here straight from the HDF5 file), and a fit changes no frozen layer, BatchNorm
statistics included when freeze_batchnorm is on."""

import keras
import numpy as np
import pytest

from fracture import config
from fracture.model import build_model
from fracture.weights import imagenet_weights_file
from fracture.pretrain import save_notop_weights
from fracture.training import compile_model
from tests.test_weights import stored_weights

TINY = dict(image_size=32, dense_units=[16, 8, 4], flip=False, rotation=0, zoom=0, translate=0,
            learning_rate=1e-2, batch_size=4, trainable_layers=-1)


def cfg_of(**overrides):
    return config.load(overrides=dict(TINY, **overrides))


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """A DenseNet121 no-top file from a fracture model whose weights were moved off their init."""
    model = build_model(cfg_of(weights="none"))
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if layer.weights:
            layer.set_weights([w + rng.normal(0, 0.01, w.shape).astype(w.dtype) if w.ndim else w
                               for w in layer.get_weights()])
    path = tmp_path_factory.mktemp("w") / imagenet_weights_file("DenseNet121")
    return save_notop_weights(model, "DenseNet121", path)


def backbone_arrays(model, names):
    return {name: model.get_layer(name).get_weights() for name in names}


def test_a_model_built_from_the_file_holds_its_arrays(weights_file):
    stored = stored_weights(weights_file)
    assert len(stored) == 241 and "conv1_conv" in stored and "bn" in stored  # 120 convolutions + 121 BatchNorms
    model = build_model(cfg_of(weights=str(weights_file)))
    for name, arrays in stored.items():
        ours = model.get_layer(name).get_weights()
        assert len(ours) == len(arrays) and all(np.array_equal(a, b) for a, b in zip(ours, arrays)), name
    # and the file is read as the ImageNet one is: by keras.applications itself
    reference = keras.applications.DenseNet121(include_top=False, weights=str(weights_file), input_shape=(32, 32, 3))
    assert np.array_equal(reference.get_layer("conv1_conv").get_weights()[0], stored["conv1_conv"][0])


def _fit(model, cfg):
    compile_model(model, cfg)
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (8, 32, 32, 1)).astype(np.float32)
    y = rng.integers(0, 2, (8, 1)).astype(np.float32)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)


@pytest.mark.parametrize("freeze", ["auto", "false"])
def test_frozen_layers_do_not_change_during_a_fit(weights_file, freeze):
    cfg = cfg_of(weights=str(weights_file), trainable_layers=20, freeze_batchnorm=freeze)
    model = build_model(cfg)
    names = list(stored_weights(weights_file))
    before = backbone_arrays(model, names)
    trainable = {layer.name for layer in model.layers if layer.trainable}
    _fit(model, cfg)
    after = backbone_arrays(model, names)
    changed = {n for n in names if not all(np.array_equal(a, b) for a, b in zip(before[n], after[n]))}
    batchnorms = {n for n in names if isinstance(model.get_layer(n), keras.layers.BatchNormalization)}
    top = {n for n in names if n in trainable}
    assert changed and changed <= top | (batchnorms if freeze == "false" else set())
    if freeze == "auto":  # pretrained weights: every BatchNorm frozen, its statistics untouched
        assert not batchnorms & (trainable | changed)
        assert top and not top & batchnorms
    else:  # BatchNorm layers in the unfrozen top train: scale, offset and moving statistics move
        assert batchnorms & changed and batchnorms & trainable


def test_auto_keeps_batchnorm_training_from_scratch():
    model = build_model(cfg_of(weights="none", trainable_layers=-1))
    assert all(layer.trainable for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))
    frozen = build_model(cfg_of(weights="none", trainable_layers=-1, freeze_batchnorm="true"))
    assert not any(layer.trainable for layer in frozen.layers if isinstance(layer, keras.layers.BatchNormalization))
