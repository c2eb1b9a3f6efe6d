"""Training throughput: the repo's input pipeline against `fit` on in-memory arrays.

Both runs train the same model (recipe: DenseNet121, top 60 layers trainable, in-model
augmentation) at the same batch size and image size, in one process, one after the other:

  pipeline   image files -> index -> decode-once cache -> PyDataset batches -> fit
  in-memory  the already-decoded float32 array -> fit(x, y)

Epoch 1 of each includes graph compilation, so the ratio compares the steady-state epochs
(2..N); the one-time cold decode of the files is reported on its own line.

    python benchmarks/throughput.py [--image-size 224] [--images 160] [--epochs 3]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import fracture  # noqa: F401  (before Keras: fracture keeps TensorFlow's start-up banner out)
import keras
import numpy as np

from fracture import config, data
from fracture.model import build_model
from fracture.training import compile_model


class EpochTimer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_train_begin(self, logs=None):
        self.seconds = []

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.start)


def fit_timed(cfg, source, epochs: int) -> list[float]:
    keras.utils.set_random_seed(cfg.seed)
    model = build_model(cfg)
    compile_model(model, cfg)
    timer = EpochTimer()
    if isinstance(source, tuple):
        model.fit(*source, batch_size=cfg.batch_size, epochs=epochs, shuffle=True, callbacks=[timer], verbose=0)
    else:
        model.fit(source, epochs=epochs, callbacks=[timer], verbose=0)
    return timer.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/synthetic/MURA-v1.1")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--images", type=int, default=160, help="training images used")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    cache = Path(tempfile.mkdtemp(prefix="fracture-bench-"))
    cfg = config.load(overrides=dict(data_dir=args.data, weights="none", image_size=args.image_size,
                                     batch_size=args.batch_size, cache_dir=str(cache), mlflow=False),
                      frozen_random_backbone=True)  # timing only: the weights' values do not matter
    frame = data.load_index(cfg)
    frame = frame[frame["split"] == "train"].head(args.images)
    paths, labels = frame["path"].tolist(), frame["label"].to_numpy(np.float32)

    started = time.perf_counter()
    images, ok, _ = data.load_images(paths, cfg.image_size, cfg.cache_dir)  # cold: decodes every file
    cold_decode = time.perf_counter() - started
    started = time.perf_counter()
    images, ok, _ = data.load_images(paths, cfg.image_size, cfg.cache_dir)  # warm: the cached array
    warm_load = time.perf_counter() - started
    n = int(ok.sum())

    pipeline = fit_timed(cfg, data.make_batches(images[ok], labels[ok], cfg.batch_size, shuffle=True), args.epochs)
    arrays = fit_timed(cfg, (images[ok].astype(np.float32), labels[ok]), args.epochs)
    shutil.rmtree(cache, ignore_errors=True)

    rate = lambda seconds: n * len(seconds[1:]) / sum(seconds[1:])  # noqa: E731 (steady-state epochs)
    print(f"backend={keras.backend.backend()} backbone={cfg.backbone} image_size={cfg.image_size} "
          f"batch={cfg.batch_size} images={n} epochs={args.epochs} trainable_layers={cfg.trainable_layers}")
    print(f"cold decode of {n} files: {cold_decode:.2f} s ({n / cold_decode:.0f} img/s); "
          f"cached reload: {warm_load * 1000:.0f} ms")
    print(f"epoch seconds  pipeline: {', '.join(f'{s:.1f}' for s in pipeline)}")
    print(f"epoch seconds  in-memory: {', '.join(f'{s:.1f}' for s in arrays)}")
    print(f"steady-state training  pipeline: {rate(pipeline):.2f} img/s  in-memory arrays: {rate(arrays):.2f} img/s")
    print(f"ratio pipeline / in-memory: {rate(pipeline) / rate(arrays):.3f} (target >= 0.95)")


if __name__ == "__main__":
    main()
