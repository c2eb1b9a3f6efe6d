"""Is the synthetic dataset learnable? A small CNN trained through the repo's own pipeline.

The demo trains DenseNet121 from scratch (no ImageNet weights offline), which is slow to get
going on a 2-core CPU. This script separates "the data carries a learnable fracture signal" from
"DenseNet121 from scratch learns it within the demo's budget": four conv/BatchNorm/ReLU/pool
blocks, the same decode-once cache, PyDataset batches and in-model augmentation as the demo, the
patient-level validation split, and prints validation AUC after every epoch.

    python benchmarks/learnability.py [--data data/synthetic/MURA-v1.1] [--image-size 96] [--epochs 10]
"""

from __future__ import annotations

import argparse
import time

import fracture  # noqa: F401  (before Keras: fracture keeps TensorFlow's start-up banner out)
import keras
import numpy as np
from sklearn.metrics import roc_auc_score

from fracture import config, data


def small_cnn(cfg) -> keras.Model:
    inputs = keras.Input((cfg.image_size, cfg.image_size, 1))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.RandomFlip("horizontal", seed=cfg.seed)(x)
    x = keras.layers.RandomRotation(cfg.rotation / 360, fill_mode="constant", seed=cfg.seed)(x)
    for filters in (16, 32, 64, 64):
        x = keras.layers.Conv2D(filters, 3, padding="same")(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/synthetic/MURA-v1.1")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()

    cfg = config.load(overrides=dict(data_dir=args.data, image_size=args.image_size, rotation=10, mlflow=False))
    keras.utils.set_random_seed(cfg.seed)
    arrays = data.split_arrays(data.load_index(cfg), cfg)
    _, x_train, y_train = arrays["train"]
    _, x_val, y_val = arrays["val"]
    model = small_cnn(cfg)
    model.compile(keras.optimizers.Adam(1e-3), "binary_crossentropy")
    batches = data.make_batches(x_train, y_train, cfg.batch_size, shuffle=True, seed=cfg.seed)
    print(f"backend={keras.backend.backend()} image_size={cfg.image_size} train={len(y_train)} val={len(y_val)}")
    started = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        model.fit(batches, epochs=1, verbose=0)
        auc = roc_auc_score(y_val, model.predict(x_val.astype(np.float32), verbose=0).ravel())
        print(f"epoch {epoch:2d}  {time.perf_counter() - started:6.0f} s  val AUC {auc:.3f}", flush=True)


if __name__ == "__main__":
    main()
