"""The fine-tuning recipe, exercised offline: pretrain, save as an ImageNet-style file, fine-tune three ways.

Offline there are no ImageNet weights, so nothing else shows that the real recipe's mechanics work
(weights=<file>, the top 60 backbone layers unfrozen, Adam 1e-4, batch 16). This script:

1. pretrains DenseNet121 from scratch on one synthetic set (seed A, easy cracks; the demo's
   from-scratch settings: SGD 0.01 with Nesterov momentum, BatchNorm momentum 0.9),
2. saves its backbone as a Keras no-top weights file (`fracture.pretrain.save_notop_weights`:
   the layout and name of Keras's ImageNet file, loadable exactly as that file is),
3. fine-tunes on a different synthetic set (seed B, medium cracks) with the recipe's settings,
   three ways: weights=<file> with freeze_batchnorm=true, the same with freeze_batchnorm=false,
   and from scratch (weights=none, every layer trained, the same optimizer),
4. prints each run's validation loss and AUC after every epoch, as a markdown table.

    python benchmarks/transfer.py [--image-size 64] [--patients 60] [--pretrain-epochs 10] [--epochs 6]
    python benchmarks/transfer.py --source-run saved_models/<demo run> [--patients 60] [--epochs 6]

Sizes are small so it runs on a 2-core CPU; it shows the mechanics and the shape of the curves,
not the accuracy the recipe reaches on real films at 224 px. A from-scratch DenseNet121 learns
only after many epochs at the demo's size, so step 1 costs about a `make demo`; `--source-run`
skips it and takes the backbone of a run that has already learned (a `make demo` run: trained on
the demo's data, seed 0 and easy cracks, which the target set does not share), at its image size.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import fracture  # noqa: F401  (before Keras: fracture keeps TensorFlow's start-up banner out)
import keras
import numpy as np
from sklearn.metrics import log_loss, roc_auc_score

from fracture import config, data
from fracture.model import build_model
from fracture.weights import imagenet_weights_file
from fracture.pretrain import save_notop_weights
from fracture.errors import FractureError
from fracture.runs import load_run
from fracture.synth import generate
from fracture.training import compile_model

NO_AUGMENTATION = dict(flip=False, rotation=0, zoom=0, translate=0)


def arrays(data_dir, cfg):
    split = data.split_arrays(data.load_index(config.update(cfg, {"data_dir": str(data_dir)})), cfg)
    return split["train"][1:], split["val"][1:]


def fit_curve(cfg, train, val, label):
    """Train `cfg`'s model epoch by epoch; [(epoch, seconds, val loss, val AUC)] and the model."""
    keras.utils.set_random_seed(cfg.seed)
    model = build_model(cfg)
    compile_model(model, cfg)
    (x_train, y_train), (x_val, y_val) = train, val
    batches = data.make_batches(x_train, y_train, cfg.batch_size, shuffle=True, seed=cfg.seed)
    rows, started = [], time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        model.fit(batches, epochs=1, verbose=0)
        p = model.predict(np.asarray(x_val, np.float32), verbose=0).ravel().astype(np.float64)
        rows.append((epoch, time.perf_counter() - started, log_loss(y_val, np.clip(p, 1e-7, 1 - 1e-7)),
                     roc_auc_score(y_val, p)))
        print(f"{label:<28} epoch {epoch:2d}  {rows[-1][1]:6.0f} s  val loss {rows[-1][2]:.3f}  "
              f"val AUC {rows[-1][3]:.3f}", flush=True)
    return rows, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--patients", type=int, default=60)
    parser.add_argument("--pretrain-epochs", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--source-run", default="",
                        help="take the backbone of this trained DenseNet121 run instead of pretraining (its image size)")
    parser.add_argument("--out", default="", help="folder for the data and the weights file (default: temporary)")
    args = parser.parse_args()

    out = Path(args.out or tempfile.mkdtemp(prefix="transfer-"))
    try:
        source_run = load_run(args.source_run) if args.source_run else None
    except FractureError as exc:  # a wrong folder: say so, as the CLI does, not with a traceback
        parser.error(f"--source-run: {exc}")
    image_size = source_run.config.image_size if source_run else args.image_size
    if source_run and source_run.config.backbone != "DenseNet121":
        parser.error(f"--source-run: {source_run.path} has a {source_run.config.backbone} backbone, not DenseNet121")
    size = dict(max_size=2 * image_size, min_size=image_size)
    target = generate(out / "target", patients=args.patients, seed=22, difficulty="medium", **size)
    base = config.load(overrides=dict(image_size=image_size, mlflow=False, cache_dir=str(out / "cache"),
                                      dense_units=[64, 32, 16], **NO_AUGMENTATION))
    print(f"backend={keras.backend.backend()} image_size={image_size} patients={args.patients} per set; "
          f"data and weights in {out}")

    curves = {}
    weights_file = out / "weights" / imagenet_weights_file("DenseNet121")
    if source_run:
        val_auc = source_run.metrics.get("val", {}).get("image", {}).get("auc")
        print(f"source: the backbone of {source_run.path} (validation AUC {val_auc})")
        weights = save_notop_weights(source_run.model, "DenseNet121", weights_file)
    else:
        source = generate(out / "source", patients=args.patients, seed=11, difficulty="easy", **size)
        pretrain = config.update(base, dict(weights="none", trainable_layers=-1, optimizer="sgd",
                                            learning_rate=0.01, momentum=0.9, batchnorm_momentum=0.9, dropout=0.0,
                                            epochs=args.pretrain_epochs))
        curves["pretrain (source set)"], model = fit_curve(pretrain, *arrays(source, pretrain), "pretrain")
        weights = save_notop_weights(model, "DenseNet121", weights_file)
    print(f"no-top weights file: {weights}")

    recipe = dict(trainable_layers=60, optimizer="adam", learning_rate=1e-4, batch_size=16, epochs=args.epochs)
    ways = {"weights=file, frozen BN": dict(weights=str(weights), freeze_batchnorm="true"),
            "weights=file, BN training": dict(weights=str(weights), freeze_batchnorm="false"),
            "from scratch": dict(weights="none", trainable_layers=-1, freeze_batchnorm="false")}
    target_arrays = arrays(target, base)
    for label, settings in ways.items():
        cfg = config.update(base, {**recipe, **settings})
        curves[label], _ = fit_curve(cfg, *target_arrays, label)

    print("\n| run | " + " | ".join(f"epoch {e}" for e in range(1, max(len(c) for c in curves.values()) + 1)) + " |")
    print("|---|" + "---|" * max(len(c) for c in curves.values()))
    for label, rows in curves.items():
        cells = " | ".join(f"{loss:.3f} / {auc:.3f}" for _, _, loss, auc in rows)
        print(f"| {label} | {cells} |")
    print("(each cell: validation loss / validation AUC after that epoch)")


if __name__ == "__main__":
    main()
