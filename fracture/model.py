"""The model: raw grayscale pixels in, fracture probability out, as one flat functional graph.

raw pixels -> [augmentation, training only] -> gray->RGB -> backbone preprocess_input
-> backbone layers (inlined, not a nested submodel) -> global pool -> 3 dense -> logit -> sigmoid

Because preprocessing and augmentation are layers of the saved model, a `model.keras` takes the
same raw pixels in training, evaluation, the CLI and the web app. Because the graph is flat,
every backbone layer can be reached by name (for CAMs) on every Keras backend.
"""

from __future__ import annotations

import contextlib
import logging

import keras

from fracture.config import BACKBONES  # backbone name -> keras.applications module (preprocess_input, weights)
from fracture.errors import FractureError, WeightsError
from fracture.weights import resolve_weights

log = logging.getLogger(__name__)

# Names of the layers this module adds in front of the backbone and behind it.
PREPROCESS_LAYERS = ("augment_flip", "augment_rotation", "augment_zoom", "augment_translation",
                     "gray_to_rgb", "backbone_preprocess")
LOGIT_LAYER = "logit"
OUTPUT_LAYER = "probability"
POOL_LAYER = "global_pool"


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
    unfrozen = "all backbone layers" if cfg.trainable_layers < 0 else f"top {cfg.trainable_layers} backbone layers"
    # BatchNorm moving statistics count as frozen even when every layer trains
    log.info("%s: %s trainable / %s frozen parameters (%s unfrozen)", model.name, f"{trainable:,}", f"{frozen:,}",
             unfrozen)
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


