import h5py
import keras
import numpy as np
import pytest

from fracture import config
from fracture.errors import FractureError, WeightsError
from fracture.model import BACKBONES, PREPROCESS_LAYERS, build_model, unfrozen_layers
from fracture.weights import imagenet_weights_file


def cfg_of(**overrides):
    return config.load(overrides=dict(dict(weights="none", image_size=32, dense_units=[16, 8, 4]), **overrides),
                       frozen_random_backbone=True)  # the freezing itself is under test


@pytest.fixture(scope="module")
def densenet():
    return build_model(cfg_of(trainable_layers=60, batchnorm_momentum=0.9))


def test_graph_is_flat_with_inner_layers_reachable(densenet):
    assert not any(isinstance(layer, keras.Model) for layer in densenet.layers)
    for name in ("conv3_block2_1_relu", "pool4_relu", "relu", "logit", "probability", *PREPROCESS_LAYERS):
        densenet.get_layer(name)
    assert densenet.input_shape == (None, 32, 32, 1) and densenet.output_shape == (None, 1)
    assert [densenet.get_layer(f"dense_{i}").units for i in (1, 2, 3)] == [16, 8, 4]


def test_top_n_backbone_layers_unfrozen(densenet):
    names = [layer.name for layer in densenet.layers]
    backbone = names[names.index("backbone_preprocess") + 1:names.index("global_pool")]
    trainable = [n for n in backbone if densenet.get_layer(n).trainable]
    assert trainable == backbone[-60:]
    assert densenet.get_layer("conv2_block1_0_bn").trainable is False
    assert "conv5_block16_2_conv" in unfrozen_layers(densenet)
    assert all(densenet.get_layer(n).trainable for n in ("dense_1", "logit"))


def test_batchnorm_momentum_applies_to_the_unfrozen_batchnorm_only(densenet):
    assert densenet.get_layer("conv5_block16_1_bn").momentum == 0.9  # in the top 60
    assert densenet.get_layer("bn").momentum == 0.9
    assert densenet.get_layer("conv2_block1_0_bn").momentum == 0.99  # frozen: Keras's default kept


def test_augmentation_runs_only_in_training(densenet):
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 1)).astype("float32")
    a = keras.ops.convert_to_numpy(densenet(x, training=False))
    b = keras.ops.convert_to_numpy(densenet(x, training=False))
    np.testing.assert_allclose(a, b)
    np.testing.assert_allclose(densenet.predict(x, verbose=0), a, atol=1e-5)
    layer = densenet.get_layer("augment_flip")
    flipped = [keras.ops.convert_to_numpy(layer(x, training=True)) for _ in range(8)]
    assert any(not np.allclose(f, x) for f in flipped)  # in training the flip does happen


def test_preprocessing_is_the_backbones_own(densenet):
    probe = keras.Model(densenet.input, densenet.get_layer("backbone_preprocess").output)
    x = np.full((1, 32, 32, 1), 128.0, "float32")
    expected = keras.applications.densenet.preprocess_input(np.full((1, 32, 32, 3), 128.0, "float32"))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(probe(x, training=False)), expected, rtol=1e-5)


@pytest.mark.parametrize("backbone", ["ResNet50", "EfficientNetB0"])
def test_other_backbones(backbone):
    model = build_model(cfg_of(backbone=backbone, trainable_layers=10))
    assert model.output_shape == (None, 1)
    assert sum(layer.trainable and bool(layer.weights) for layer in model.layers) >= 4


def test_unknown_backbone():
    with pytest.raises(FractureError, match="unknown backbone 'DenseNet122'"):
        build_model(cfg_of(backbone="DenseNet122"))
    assert {"DenseNet121", "ResNet50", "EfficientNetB0"} <= set(BACKBONES)


def test_cached_imagenet_file_is_used(tmp_path, monkeypatch):
    """A file in Keras's legacy HDF5 layout (the format of the real ImageNet files) in the cache."""
    from keras.src.legacy.saving import legacy_h5_format  # writes the same layout Keras downloads

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    (tmp_path / "models").mkdir()
    reference = keras.applications.DenseNet121(include_top=False, weights=None, input_shape=(32, 32, 3))
    with h5py.File(tmp_path / "models" / imagenet_weights_file("DenseNet121"), "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, reference)
    model = build_model(cfg_of(weights="imagenet"))
    np.testing.assert_allclose(model.get_layer("conv5_block16_2_conv").get_weights()[0],
                               reference.get_layer("conv5_block16_2_conv").get_weights()[0])


def test_weights_file_path(tmp_path):
    reference = keras.applications.DenseNet121(include_top=False, weights=None, input_shape=(32, 32, 3))
    reference.save_weights(tmp_path / "backbone.weights.h5")
    model = build_model(cfg_of(weights=str(tmp_path / "backbone.weights.h5")))
    np.testing.assert_allclose(model.get_layer("conv2_block1_1_conv").get_weights()[0],
                               reference.get_layer("conv2_block1_1_conv").get_weights()[0])
    with pytest.raises(WeightsError, match="weights file not found"):
        build_model(cfg_of(weights=str(tmp_path / "nope.h5")))
