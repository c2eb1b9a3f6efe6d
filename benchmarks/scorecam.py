"""Score-CAM with a subset of channels against full Score-CAM (every channel), per layer.

Score-CAM scores one masked copy of the image per channel, so DenseNet121's 1024-channel `relu`
costs 1024 forward passes per image; `fracture.cam` scores SCORECAM_CHANNELS of them. This prints
how close the subset's maps come to the full ones (per-image Pearson and Spearman correlation of
the [0, 1] maps at the input size, mean over images) when the channels are ranked by their
spatial standard deviation ("std", Faster Score-CAM, the default) or by their mean activation
("mean", the earlier choice), and what each costs. A markdown table, to paste into docs/cam.md.

    python benchmarks/scorecam.py --run saved_models/<run> [--layers relu,pool4_relu]
        [--channels 32,64,128,256] [--limit 8] [--split test]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import fracture  # noqa: F401, E402  (before Keras: fracture keeps TensorFlow's start-up banner out)
import keras  # noqa: E402
import numpy as np  # noqa: E402
from scipy.stats import pearsonr, spearmanr  # noqa: E402

from fracture import cam  # noqa: E402
from fracture.cam.maps import _scorecam  # noqa: E402
from fracture.data import resize  # noqa: E402
from fracture.imageio import read_gray  # noqa: E402
from fracture.runs import load_run  # noqa: E402


def maps_of(model, x, layer, channels, rank_by):
    """[0, 1] Score-CAM maps at the input size and the seconds per image."""
    started = time.perf_counter()
    a = cam.engine_for(model).layer(layer).activations(x)
    raw = np.maximum(_scorecam(model, x, a, 1.0, channels, rank_by), 0)
    return cam.normalize_maps(cam.upsample(raw, x.shape[1:3])), (time.perf_counter() - started) / len(x)


def correlations(full, part):
    """Mean per-image Pearson and Spearman of two stacks of maps (blank maps left out)."""
    keep = [i for i in range(len(full)) if full[i].max() > full[i].min() and part[i].max() > part[i].min()]
    if not keep:
        return float("nan"), float("nan"), 0
    p = np.mean([pearsonr(full[i].ravel(), part[i].ravel()).statistic for i in keep])
    s = np.mean([spearmanr(full[i].ravel(), part[i].ravel()).statistic for i in keep])
    return float(p), float(s), len(keep)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--layers", default="relu,pool4_relu")
    parser.add_argument("--channels", default="32,64,128,256")
    parser.add_argument("--limit", type=int, default=8, help="images (half positive)")
    parser.add_argument("--split", default="test")
    args = parser.parse_args()

    run = load_run(args.run)
    paths = cam.default_images(run, args.limit, args.split)
    size = run.model.input_shape[1]
    x = np.stack([resize(read_gray(p, run.config.max_pixels), size) for p in paths])[..., None].astype(np.float32)
    print(f"run {run.name} ({size} px), {len(x)} {args.split} images, backend {keras.backend.backend()}, "
          f"{os.cpu_count()} CPUs")
    print("| layer | channels scored | ranked by | Pearson with full | Spearman with full | images | s/image |")
    print("|---|---|---|---|---|---|---|")
    for layer in [name.strip() for name in args.layers.split(",")]:
        total = cam.engine_for(run.model).layer(layer).activations(x[:1]).shape[-1]
        full, seconds = maps_of(run.model, x, layer, 0, "std")
        print(f"| {layer} | all {total} | - | 1 | 1 | {len(x)} | {seconds:.2f} |")
        for k in [int(c) for c in args.channels.split(",") if 0 < int(c) < total]:
            for rank_by in ("mean", "std"):
                part, seconds = maps_of(run.model, x, layer, k, rank_by)
                p, s, n = correlations(full, part)
                print(f"| {layer} | {k} | {rank_by} | {p:.3f} | {s:.3f} | {n} | {seconds:.2f} |")


if __name__ == "__main__":
    main()
