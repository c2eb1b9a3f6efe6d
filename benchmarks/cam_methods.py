"""Every map method in one table: localization, faithfulness, sanity verdict and cost.

    python benchmarks/cam_methods.py --run saved_models/<run> [--layer relu] [--limit 60]
        [--road-images 16] [--sanity-limit 4] [--methods all] [--cost-batch 4] [--repeats 2]
    python benchmarks/cam_methods.py --cost-only [--image-size 160]

Columns, per method (layer methods on `--layer`; input-space methods on the pixels):
  pointing     pointing game over the positive test images (`cam --evaluate`), beside the random
               maps' value (random_grid of that layer)
  distractor   the cam_eval.csv columns whose names start with "distractor" (share of the map's
               peak / energy on the synthetic side markers), where the data and code provide them
  ROAD         road_combined, mean over 20/40/60/80 % of (LeRF - MoRF) / 2 in p(fracture)
               (higher = more faithful), on the first --road-images images
  sanity       spearman of the maps with every weight randomized (`cam --sanity`), passes below 0.5
  cost         CPU seconds of the method on a batch, over CPU seconds of one forward pass of the
               same batch (`predict_on_batch`), on DenseNet121 with random weights at --image-size
               (the cost does not depend on the weights); medians of --repeats after a warm-up
The run's rows are written to <run>/cam_eval.csv and cam_sanity.csv as by the `cam` verb; the
table is printed as markdown for docs/cam.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from fracture import cam, config  # noqa: E402  (first: fracture keeps TensorFlow's start-up banner out)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from fracture.model import build_model  # noqa: E402


def cpu_seconds(fn) -> float:
    started = time.process_time()
    fn()
    return time.process_time() - started


def costs(methods, layer, image_size, batch, repeats) -> dict:
    """{method: CPU time / CPU time of one forward pass}, DenseNet121 with random weights."""
    cfg = config.load(overrides=dict(weights="none", trainable_layers=-1, image_size=image_size))
    keras.utils.set_random_seed(0)
    model = build_model(cfg)
    x = np.random.default_rng(0).uniform(0, 255, (batch, image_size, image_size, 1)).astype(np.float32)
    jobs = {"forward": lambda: model.predict_on_batch(x)}
    for method in methods:
        jobs[method] = lambda method=method: cam.cam_maps(model, x, [layer], method)
    for fn in jobs.values():  # compile / trace
        fn()
    times = {name: [] for name in jobs}
    for _ in range(repeats):  # interleaved, so load from other jobs hits every method alike
        for name, fn in jobs.items():
            times[name].append(cpu_seconds(fn))
    forward = statistics.median(times["forward"])
    print(f"cost: DenseNet121 (random weights) at {image_size} px, batch {batch}, layer {layer}, backend "
          f"{keras.backend.backend()}, {os.cpu_count()} CPUs; forward pass {forward:.3f} CPU s")
    return {m: statistics.median(times[m]) / forward for m in methods}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a trained run on synthetic data (boxes); without it: cost only")
    parser.add_argument("--cost-only", action="store_true")
    parser.add_argument("--methods", default="all")
    parser.add_argument("--layer", default="relu")
    parser.add_argument("--limit", type=int, default=60, help="positive test images for the evaluation")
    parser.add_argument("--road-images", type=int, default=16)
    parser.add_argument("--sanity-limit", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=160, help="of the cost model")
    parser.add_argument("--cost-batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    methods = cam.check_methods([m.strip() for m in args.methods.split(",")])

    cost = costs(methods, args.layer, args.image_size, args.cost_batch, args.repeats)
    if args.cost_only or not args.run:
        print("| method | cost (x forward) |\n|---|---|")
        for m in methods:
            print(f"| {m} | {cost[m]:.1f} |")
        return

    from fracture.runs import load_run

    run = load_run(args.run)
    table = cam.evaluate_localization(run, methods, [args.layer], limit=args.limit, road_images=args.road_images)
    sanity = cam.sanity_check(run, methods, [args.layer], limit=args.sanity_limit)
    verdict = {m: v for (m, _), v in cam.verdicts(sanity).items()}
    distractor = [c for c in table.columns if c.startswith("distractor")]
    rows = {(r["method"], r["layer"]): r for r in table.to_dict("records")}
    random_row = rows[("random_grid", args.layer)]
    print(f"run {run.name}: {int(table['n_images'].iloc[0])} positive test images, ROAD on "
          f"{int(table['road_n_images'].iloc[0])}, sanity on {args.sanity_limit} images; random maps on the "
          f"{args.layer} grid: pointing {random_row['pointing_game']:.2f}, ROAD {random_row['road_combined']:.3f}")
    header = ["method", "layer", "pointing game", *distractor, "ROAD combined", "sanity (spearman)", "cost (x forward)"]
    print("| " + " | ".join(header) + " |\n" + "|---" * len(header) + "|")
    for method, layer in cam.method_layers(methods, [args.layer]):
        r = rows[(method, layer)]
        rho, passed = verdict[method]
        cells = [method, layer, f"{r['pointing_game']:.2f}", *(f"{r[c]:.2f}" for c in distractor),
                 f"{r['road_combined']:.3f}", f"{rho:.2f} {'pass' if passed else 'FAIL'}", f"{cost[method]:.1f}"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
