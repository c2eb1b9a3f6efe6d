"""Where along training do the demo's targets hold? One demo training, scored after every epoch.

Trains the demo recipe (configs/demo.yaml plus any key=value overrides) and, after each epoch,
scores that epoch's weights the way `make demo` scores its final model: validation AUC and loss
(Keras), the threshold chosen on validation studies (Youden's J), validation and test kappa at
that threshold, test AUC, and the last layer's Grad-CAM pointing game and distractor (side
marker) peak share on the test positives (the first --limit and all of them), and the pointing
game on the validation positives. The test columns are for choosing the *recipe* (the
stopping rule, the epoch cap) across seeds, never for choosing a model inside one run.

    python benchmarks/demo_trace.py --seed 1 [--limit 60] [--out benchmarks/results] [key=value ...]

Writes <out>/trace-seed<N>.csv (one row per epoch) and prints it. The run folder goes to a
temporary runs_dir, with MLflow off.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import types
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def trace_callback(cfg, run_dir: Path, rows: list, limit: int):
    """A Keras callback that scores each epoch's weights (module doc); rows gathers the results."""
    import keras

    from fracture import data as data_lib
    from fracture.cam.maps import cam_maps
    from fracture.cam.metrics import _positives_with_boxes, distractor_peak, pointing_game
    from fracture.evaluation import choose_threshold, predict_images, score_frame

    arrays = data_lib.split_arrays(data_lib.load_index(cfg), cfg)

    class Trace(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            started = time.perf_counter()
            scored = {}
            for split in ("val", "test"):
                frame, images, _ = arrays[split]
                scored[split] = frame.assign(probability=predict_images(self.model, images, cfg.batch_size))
            threshold, _ = choose_threshold(scored["val"], cfg)
            row = {"epoch": epoch + 1, "val_auc": logs.get("val_auc"), "val_loss": logs.get("val_loss"),
                   "train_auc": logs.get("auc"), "threshold": threshold}
            for split, frame in scored.items():
                s = score_frame(frame, threshold)
                row.update({f"{split}_image_auc": s["image"]["auc"], f"{split}_image_kappa": s["image"]["kappa"],
                            f"{split}_study_auc": s["study"]["auc"], f"{split}_study_kappa": s["study"]["kappa"]})
            run = types.SimpleNamespace(model=self.model, config=cfg, name=run_dir.name, path=run_dir)
            _, x, boxes, distractors = _positives_with_boxes(run, 0, "test")
            maps = cam_maps(self.model, x, ["relu"], "gradcam")["relu"]
            hits = pointing_game(maps, boxes)
            row["pointing_game"] = float(hits[:limit].mean() if limit else hits.mean())
            row["pointing_game_all"] = float(hits.mean())
            row["marker_peak"] = float(distractor_peak(maps, distractors).mean())
            # The validation positives' pointing game: what a checkpoint criterion could see.
            _, xv, boxes_v, _ = _positives_with_boxes(run, 0, "val")
            row["val_pointing_game"] = float(pointing_game(cam_maps(self.model, xv, ["relu"], "gradcam")["relu"],
                                                           boxes_v).mean())
            row["score_seconds"] = round(time.perf_counter() - started, 1)
            rows.append(row)
            print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                  flush=True)

    return Trace()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=60, help="test positives scored by Grad-CAM (make demo: 60)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("overrides", nargs="*", help="key=value on top of configs/demo.yaml")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from fracture import config, training

    runs = tempfile.mkdtemp(prefix="demo-trace-")
    # No stopping rule unless asked for (stop_at_val_auc=0.97 traces the recipe's own stop).
    given = {item.split("=", 1)[0].strip() for item in args.overrides}
    defaults = [f"seed={args.seed}", "mlflow=false", f"runs_dir={runs}", f"run_name=trace-{args.seed}",
                "stop_at_val_auc=0"]
    cfg = config.load(ROOT / "configs" / "demo.yaml", overrides=[
        *[d for d in defaults if d.split("=", 1)[0] not in given], *args.overrides])
    rows: list = []
    plain = training.make_callbacks

    def with_trace(cfg_, run_dir):
        callbacks = plain(cfg_, run_dir)
        return callbacks[:-1] + [trace_callback(cfg_, run_dir, rows, args.limit), callbacks[-1]]

    training.make_callbacks = with_trace
    training.train(cfg)
    table = pd.DataFrame(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"trace-seed{args.seed}.csv"
    table.to_csv(path, index=False, float_format="%.4f")
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"written: {path}")


if __name__ == "__main__":
    main()
