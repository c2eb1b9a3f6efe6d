"""Grad-CAM cost: one Grad-CAM batch against one forward pass of the same batch, as a ratio.

DenseNet121 (random weights: the cost does not depend on them) at 224 px, batch 16, on whatever
Keras backend is active (KERAS_BACKEND). Both sides run once to compile/trace, then `--repeats`
times, interleaved; the medians of wall and CPU time are compared (the CPU time of this process
hardly depends on other jobs on a shared machine). Target: Grad-CAM <= 2x a forward pass.

  forward    model.predict_on_batch(x)       (inference mode, compiled by Keras)
  gradcam    fracture.cam.cam_maps(model, x, [layer], "gradcam")   (maps upsampled and scaled)

    python benchmarks/cam.py [--layer relu] [--image-size 224] [--batch 16] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import fracture  # noqa: F401, E402  (before Keras: fracture keeps TensorFlow's start-up banner out)
import keras  # noqa: E402
import numpy as np  # noqa: E402

from fracture import cam, config  # noqa: E402
from fracture.model import build_model  # noqa: E402


def clock(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call. Other jobs on a shared machine
    stretch the wall time; the CPU time is what the call itself costs."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", default="relu", help="CAM layer (comma list for several)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    cfg = config.load(overrides=dict(weights="none", image_size=args.image_size), frozen_random_backbone=True)  # timing only
    keras.utils.set_random_seed(0)
    model = build_model(cfg)
    x = np.random.default_rng(0).uniform(0, 255, (args.batch, args.image_size, args.image_size, 1)).astype(np.float32)
    layers = [name.strip() for name in args.layer.split(",")]

    jobs = {"forward": lambda: model.predict_on_batch(x)}
    for layer in layers:
        jobs[layer] = lambda layer=layer: cam.cam_maps(model, x, [layer], "gradcam")
    first = {name: clock(fn)[0] for name, fn in jobs.items()}  # compile / trace
    # Interleaved repeats, so a burst of load from other jobs hits both sides alike.
    times = {name: [] for name in jobs}
    for _ in range(args.repeats):
        for name, fn in jobs.items():
            times[name].append(clock(fn))

    def median(name, i):
        return statistics.median(t[i] for t in times[name])

    print(f"backend {keras.backend.backend()}, {os.cpu_count()} CPUs, DenseNet121 at {args.image_size} px, "
          f"batch {args.batch}, median of {args.repeats} interleaved repeats after one warm-up call")
    fw, fc = median("forward", 0), median("forward", 1)
    print(f"forward (predict_on_batch)     wall {fw:6.3f} s  cpu {fc:6.2f} s  "
          f"({args.batch / fw:.1f} img/s; first call {first['forward']:.1f} s)")
    for layer in layers:
        gw, gc = median(layer, 0), median(layer, 1)
        print(f"gradcam on {layer:<20} wall {gw:6.3f} s  cpu {gc:6.2f} s  "
              f"ratio {gw / fw:.2f}x wall, {gc / fc:.2f}x cpu (first call {first[layer]:.1f} s)")

if __name__ == "__main__":
    main()
