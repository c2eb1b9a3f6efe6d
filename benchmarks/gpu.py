"""GPU throughput: this pipeline's fit against fit on in-memory arrays, and an outside anchor.

One run measures steady-state images/s (the first epoch, with compilation, is not counted) for

  top-60 fit at batch 16 and 64, full fine-tune fit, predict       (workloads)
  x  pipeline (memory-mapped uint8 cache -> data.make_batches -> fit)  vs  in-memory float32 arrays
  x  precision float32 / mixed_bfloat16  x  jit_compile false / true

with the model fracture.model.build_model makes (DenseNet121, weights=none: the weights do not
change the speed), plus torchvision's DenseNet121 trained eagerly in bf16 autocast as an anchor
from outside Keras (skipped when torchvision is not installed). Targets on an H100/H200 with
KERAS_BACKEND=jax and mixed_bfloat16: pipeline >= 0.95 x in-memory; top-60 at batch 64 >= 3000 img/s.

Without a GPU it prints why and exits 0. --smoke runs the same code paths on the CPU with tiny
images, few steps and each setting and workload once (it checks the benchmark, not the speed).

    KERAS_BACKEND=jax python benchmarks/gpu.py [--image-size 224] [--images 2048] [--out gpu.json]
    python benchmarks/gpu.py --smoke
"""

from __future__ import annotations

import argparse
import itertools
import json
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

WORKLOADS = (  # name, trainable_layers, batch size, what is timed
    ("top60_b16", 60, 16, "fit"),
    ("top60_b64", 60, 64, "fit"),
    ("full_b64", -1, 64, "fit"),
    ("predict_b64", 60, 64, "predict"),
)
SETTINGS = tuple(itertools.product(("float32", "mixed_bfloat16"), ("false", "true")))  # precision, jit_compile


def gpu_present() -> tuple[bool, str]:
    """Whether the Keras backend sees a GPU, and what it saw."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        devices = [d for d in jax.devices() if d.platform == "gpu"]
    elif backend == "tensorflow":
        import tensorflow as tf

        devices = tf.config.list_physical_devices("GPU")
    else:
        import torch

        devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return bool(devices), f"{backend}: {', '.join(map(str, devices)) or 'no GPU device'}"


class EpochTimer(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.start)


def keras_rate(cfg, source, labels, kind: str, repeats: int) -> tuple[float, bool]:
    """Steady-state images/s: fit `repeats` epochs (or predict `repeats` times), timing all but the
    first; and whether XLA was really used (Keras falls back to jit_compile=False, with a warning,
    for a model it cannot compile)."""
    keras.utils.set_random_seed(cfg.seed)
    model = build_model(cfg)
    compile_model(model, cfg)
    n = len(labels)
    in_memory = isinstance(source, np.ndarray)
    if kind == "predict":
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            if in_memory:
                model.predict(source, batch_size=cfg.batch_size, verbose=0)
            else:
                model.predict(data.predict_batches(source, cfg.batch_size), verbose=0)
            seconds.append(time.perf_counter() - start)
    else:
        timer = EpochTimer()
        if in_memory:
            model.fit(source, labels, batch_size=cfg.batch_size, epochs=repeats, shuffle=True, callbacks=[timer],
                      verbose=0)
        else:
            model.fit(data.make_batches(source, labels, cfg.batch_size, shuffle=True, seed=cfg.seed), epochs=repeats,
                      callbacks=[timer], verbose=0)
        seconds = timer.seconds
    return n * (len(seconds) - 1) / sum(seconds[1:]), bool(model.jit_compile)


def torch_anchor(images: np.ndarray, labels: np.ndarray, batch: int, repeats: int, device: str) -> float | str:
    """torchvision DenseNet121 (1 output), eager, bf16 autocast, Adam: steady-state training images/s."""
    try:
        import torch
        import torchvision
    except ImportError as exc:
        return f"skipped ({exc.name} not installed: pip install torch torchvision)"
    torch.manual_seed(0)
    model = torchvision.models.densenet121(weights=None, num_classes=1).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), 1e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2)  # uint8 NCHW, 1 channel
    y_all = torch.from_numpy(labels)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, len(y_all) - batch + 1, batch):
            x = x_all[i:i + batch].to(device).float().div(255).expand(-1, 3, -1, -1)
            x = x.contiguous(memory_format=torch.channels_last)
            y = y_all[i:i + batch].to(device)
            with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16):
                loss = loss_fn(model(x).squeeze(1).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    steps = len(y_all) // batch
    return steps * batch * (len(seconds) - 1) / sum(seconds[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--images", type=int, default=2048, help="images per epoch (a multiple of 64 is fair)")
    parser.add_argument("--repeats", type=int, default=3, help="epochs (or predict passes); the first is not timed")
    parser.add_argument("--backbone", default="DenseNet121")
    parser.add_argument("--smoke", action="store_true",
                        help="CPU, VGG16 (few layers: quick to compile), 32 px, 64 images, 2 repeats: checks the code")
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args()

    has_gpu, seen = gpu_present()
    if args.smoke:
        args.image_size, args.images, args.repeats, args.backbone = 32, 64, 2, "VGG16"
    elif not has_gpu:
        print(f"benchmarks/gpu.py: no GPU visible ({seen}); nothing measured. On a CPU, `--smoke` checks the code.")
        return
    work = Path(tempfile.mkdtemp(prefix="fracture-gpu-"))
    try:
        rng = np.random.default_rng(0)
        cache = work / "images.npy"  # the layout data.load_images writes: (N, size, size, 1) uint8
        np.save(cache, rng.integers(0, 256, (args.images, args.image_size, args.image_size, 1), dtype=np.uint8))
        images = np.load(cache, mmap_mode="r")
        labels = (rng.random(args.images) < 0.5).astype(np.float32)
        in_memory = np.asarray(images, np.float32)
        print(f"{seen}; backbone={args.backbone} image_size={args.image_size} images={args.images} "
              f"repeats={args.repeats}"
              f"{' (smoke: CPU, not a speed measurement)' if args.smoke else ''}")
        rows = []
        # smoke: each setting and each workload once (zip), not all 16 pairs: the same code paths
        cases = zip(SETTINGS, WORKLOADS) if args.smoke else itertools.product(SETTINGS, WORKLOADS)
        for (precision, jit), (name, trainable, batch, kind) in cases:
            cfg = config.load(overrides=dict(backbone=args.backbone, weights="none", image_size=args.image_size,
                                             batch_size=batch,
                                             trainable_layers=trainable, precision=precision, jit_compile=jit,
                                             mlflow=False), frozen_random_backbone=True)  # timing only
            pipeline, xla = keras_rate(cfg, images, labels, kind, args.repeats)
            arrays, _ = keras_rate(cfg, in_memory, labels, kind, args.repeats)
            rows.append(dict(precision=precision, jit_compile=jit, xla_used=xla, workload=name, pipeline=pipeline,
                             in_memory=arrays, ratio=pipeline / arrays))
            print(f"{precision:15s} jit={jit:5s} (XLA {'on' if xla else 'off'}) {name:12s} pipeline {pipeline:8.1f} "
                  f"img/s  in-memory {arrays:8.1f} img/s  ratio {pipeline / arrays:.3f}", flush=True)
        device = "cuda" if has_gpu else "cpu"
        anchor = torch_anchor(np.asarray(images), labels, 64 if not args.smoke else 16, args.repeats, device)
        print(f"torchvision DenseNet121 eager bf16, full fine-tune, batch {64 if not args.smoke else 16}: "
              f"{anchor if isinstance(anchor, str) else f'{anchor:.1f} img/s'}")
        best = [r for r in rows if r["workload"] == "top60_b64" and r["precision"] == "mixed_bfloat16"]
        if not args.smoke:
            top = max(r["pipeline"] for r in best)
            worst = min(r["ratio"] for r in rows)
            print(f"targets: top-60 batch 64 bf16 {top:.0f} img/s (>= 3000: {'met' if top >= 3000 else 'NOT met'}); "
                  f"lowest pipeline/in-memory ratio {worst:.3f} (>= 0.95: {'met' if worst >= 0.95 else 'NOT met'})")
        if args.out:
            Path(args.out).write_text(json.dumps(dict(device=seen, smoke=args.smoke, image_size=args.image_size,
                                                      images=args.images, rows=rows, torch_anchor=anchor), indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
