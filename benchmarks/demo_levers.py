"""What makes the demo's training epoch faster? One lever at a time, on the demo's own model.

Builds the model of configs/demo.yaml (DenseNet121 from scratch, SGD, BatchNorm momentum 0.9),
compiles it as fracture.training does, and fits random uint8 images (the cost of an epoch does not
depend on what the pixels show) for `--epochs` epochs; the first epoch includes graph building and
compilation, so the steady-state figure is the median of the later ones. Each lever runs in a
fresh process (a dtype policy is global to Keras):

    python benchmarks/demo_levers.py [--images 256] [--epochs 3] [--levers base,jit,bf16,size128]

Levers: base (the demo config), jit (model.compile(jit_compile=True): XLA on CPU), bf16 (Keras
mixed_bfloat16 policy: AVX-512-BF16/AMX on CPUs that have them), size128 and size96 (image size;
the last layer's Grad-CAM grid is image_size / 32), batch32 (batch size 32).

    python benchmarks/demo_levers.py --oracle

prints, without a model, what image size costs the last layer's Grad-CAM: the pointing game of a
perfect map on that layer's grid (cam.metrics.oracle_scores) over 200 synthetic boxes per
difficulty level, and the share of the pixel change that lies inside the box.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

LEVERS = {
    "base": {},
    "jit": {"jit": True},
    "bf16": {"policy": "mixed_bfloat16"},
    "jit+bf16": {"jit": True, "policy": "mixed_bfloat16"},
    "size128": {"image_size": 128},
    "size96": {"image_size": 96},
    "batch32": {"batch_size": 32},
}


def one_lever(name: str, images: int, epochs: int) -> dict:
    """Runs in its own process: time `epochs` epochs of the demo model under one lever."""
    import keras
    import numpy as np

    from fracture import config
    from fracture.model import build_model
    from fracture.training import compile_model

    lever = LEVERS[name]
    if "policy" in lever:
        keras.mixed_precision.set_dtype_policy(lever["policy"])
    overrides = {k: v for k, v in lever.items() if k in ("image_size", "batch_size")}
    cfg = config.load("configs/demo.yaml", overrides=overrides)
    keras.utils.set_random_seed(cfg.seed)
    model = build_model(cfg)
    compile_model(model, cfg)
    if lever.get("jit"):
        model.jit_compile = True
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (images, cfg.image_size, cfg.image_size, 1), dtype=np.uint8).astype("float32")
    y = (rng.random(images) < 0.5).astype("float32")
    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        model.fit(x, y, batch_size=cfg.batch_size, epochs=1, verbose=0)
        seconds.append(time.perf_counter() - start)
    steady = statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0]
    return {"lever": name, "image_size": cfg.image_size, "batch_size": cfg.batch_size, "images": images,
            "epoch_s": [round(s, 1) for s in seconds], "ms_per_image": round(1000 * steady / images, 1)}


def oracle_table(images: int = 200, sizes=(128, 160, 192)) -> None:
    import numpy as np

    from fracture import synth
    from fracture.cam.metrics import oracle_scores, scale_box

    print(f"{'level':<7} {'in-box share of change (min, mean)':<36} " + "  ".join(
        f"oracle pointing @{s} ({s // 32}x{s // 32})" for s in sizes))
    for level in synth.DIFFICULTY:
        difficulty = synth.parse_difficulty(level)
        params = [synth._sample(np.random.default_rng(seed), 256, 512, difficulty) for seed in range(images)]
        shares = []
        for p in params[:60]:  # rendering is the slow part: 60 pairs are enough for the share
            diff = np.abs(synth._render(p, True).astype(float) - synth._render(p, False))
            x0, y0, x1, y1 = synth._box(p)
            shares.append(diff[y0:y1, x0:x1].sum() / diff.sum())
        cells = []
        for size in sizes:
            boxes = [scale_box(synth._box(p), (p["H"], p["W"]), size) for p in params]
            cells.append(f"{oracle_scores(boxes, size, (size // 32, size // 32))[0]:.3f}")
        print(f"{level:<7} {min(shares):.3f}, {np.mean(shares):.3f}{'':<24} " + "  ".join(f"{c:<26}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256, help="random images per epoch")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per lever (the first compiles)")
    parser.add_argument("--levers", default="base,jit,bf16,size128", help=f"comma list of {', '.join(LEVERS)}")
    parser.add_argument("--oracle", action="store_true", help="no training: box locality and oracle pointing game")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: the child process
    args = parser.parse_args()
    if args.oracle:
        oracle_table()
        return
    if args.one:
        print(json.dumps(one_lever(args.one, args.images, args.epochs)))
        return
    print(f"{'lever':<10} {'size':>4} {'batch':>5} {'epoch seconds':<28} ms/image (steady)")
    for name in args.levers.split(","):
        if name not in LEVERS:
            parser.error(f"unknown lever {name!r}; choose from {', '.join(LEVERS)}")
        child = subprocess.run([sys.executable, __file__, "--one", name, "--images", str(args.images),
                                "--epochs", str(args.epochs)], capture_output=True, text=True)
        if child.returncode:
            print(f"{name:<10} failed: {child.stderr.strip().splitlines()[-1]}", flush=True)
            continue
        r = json.loads(child.stdout.strip().splitlines()[-1])
        print(f"{name:<10} {r['image_size']:>4} {r['batch_size']:>5} {str(r['epoch_s']):<28} {r['ms_per_image']}",
              flush=True)


if __name__ == "__main__":
    main()
