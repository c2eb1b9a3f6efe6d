"""`python -m fracture <verb>`: a dict of verbs, each a thin call into the package.

Config and arguments are checked before Keras is imported, so mistakes answer in milliseconds.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from fracture import __version__, diskspace, portable
from fracture import config as config_lib
from fracture.errors import FractureError, ImageError


def _config(args):
    return config_lib.load(args.config, args.overrides)


def cmd_synth(args):
    # here, not at the top: it loads numpy, pandas, which this module does not
    from fracture.synth_formats import generate_format

    root = generate_format(args.out, args.format, patients=args.patients, seed=args.seed,
                           study_types=tuple(args.study_types.split(",")), max_size=args.max_size,
                           difficulty=args.difficulty)
    hint = "" if args.format == "mura" else f" (train with data_format={args.format} data_dir={root})"
    print(f"synthetic {args.format.upper() if args.format == 'mura' else args.format}-format data: {root}{hint}")


def cmd_train(args):
    cfg = _config(args)
    from fracture.training import train  # here, not at the top: it loads numpy, pandas, which this module does not

    run_dir = train(cfg)
    print(f"run folder: {run_dir}")


def cmd_evaluate(args):
    # here, not at the top: it loads numpy, pandas, sklearn, which this module does not
    from fracture.evaluation import evaluate, format_study_type_table, format_table
    from fracture.runs import load_run  # here, not at the top: it loads Keras, which this module does not

    run = load_run(args.run)
    cfg = portable.with_overrides(run, args.overrides)
    role = {"test": "final, held out: report it, do not choose by it", "val": "selection"}.get(args.split, "")

    def show(scores):  # before they are stored: a folder that cannot be written still gets its answer
        print(f"{args.split} split{f' ({role})' if role else ''}, run {run.name}, threshold "
              f"{scores['threshold']:.3f}:")
        print(format_table(scores), flush=True)
        by_type = format_study_type_table(scores)
        if by_type:
            print(f"\nby study type ({args.split} split), in the layout of the MURA paper's Table 2:")
            print(by_type, flush=True)

    evaluate(run, cfg, split=args.split, show=show, mlflow_run=args.mlflow_run)


def cmd_predict(args):
    """The table of readable files on stdout; each unreadable file and its reason on stderr, then
    an `error:` line and exit status 2 (a script must not mistake a partial answer for a full one)."""
    if args.model:  # an exported ONNX model on onnxruntime: no Keras, no TensorFlow imported
        if args.run:
            raise FractureError("give --run (a run's Keras model) or --model (an exported .onnx), not both")
        from fracture import onnx_serving  # here, not at the top: it loads numpy, pandas, which this module does not

        table = onnx_serving.predict_paths(onnx_serving.OnnxModel(args.model), args.images)
    else:
        # here, not at the top: it loads numpy, pandas, sklearn, which this module does not
        from fracture.evaluation import predict_paths
        from fracture.runs import load_run  # here, not at the top: it loads Keras, which this module does not

        table = predict_paths(load_run(args.run), args.images)
    unreadable = table[table["label"] == "unreadable"]
    readable = table[table["label"] != "unreadable"][["path", "probability", "label"]]
    if len(readable):
        with _pandas_wide():
            print(readable.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    for path, reason in zip(unreadable["path"], unreadable["reason"]):
        print(f"unreadable: {path}: {reason}", file=sys.stderr)
    if len(unreadable):
        raise ImageError(f"{len(unreadable)} of {len(table)} inputs could not be read (listed above"
                         f"{'; the others are predicted above' if len(readable) else ''})")


def _pandas_wide():
    import pandas as pd

    return pd.option_context("display.max_colwidth", None, "display.width", 200)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Each option's default after its help (when it has a real one); epilogs keep their line breaks."""

    def _get_help_string(self, action):
        text = action.help or ""
        shown = action.default is not None and action.default is not False and action.default != argparse.SUPPRESS
        if shown and "%(default)" not in text and "(default:" not in text:
            text += " (default: %(default)s)"
        return text


def config_keys_epilog() -> str:
    comments = config_lib.key_comments()
    rows = [f"  {name}={value!r}  # {comments.get(name, '')}" for name, value in config_lib.Config().to_dict().items()]
    return "config keys (key=value here, or key: value in a --config YAML file), with their defaults:\n" + "\n".join(rows)


def add_config_arguments(parser):
    parser.add_argument("--config", help="YAML file of config keys (see docs/config.md)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. epochs=2")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fracture", description="Humerus fracture detection on MURA X-rays (Keras 3).",
                                     formatter_class=HelpFormatter)
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and results")
    parser.add_argument("--version", action="version", version=f"fracture {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True)
    add_verb = verbs.add_parser

    def add_parser(name, **kwargs):  # every verb shows its defaults in --help
        return add_verb(name, formatter_class=HelpFormatter, **kwargs)

    verbs.add_parser = add_parser

    p = verbs.add_parser("synth", help="generate a synthetic dataset (MURA, COCO or YOLO layout)")
    p.add_argument("--out", default="data/synthetic",
                   help="folder to write MURA-v1.1/ into (--format mura), or the COCO / YOLO set itself")
    p.add_argument("--format", default="mura", choices=["mura", "coco", "yolo"],
                   help="mura: MURA v1.1 tree + fracture_boxes.csv; coco: FracAtlas's layout (COCO JSON + "
                        "dataset.csv); yolo: a Roboflow YOLO export (data.yaml, train/valid/test)")
    p.add_argument("--patients", type=int, default=160)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--study-types", default="XR_HUMERUS", help="comma list of XR_* types")
    p.add_argument("--max-size", type=int, default=512, help="long side of the largest images, px")
    p.add_argument("--difficulty", default="easy",
                   help="easy, medium or hard, optionally followed by overrides, e.g. "
                        "'medium,shift=0.2-0.4,hairline=0.5'; keys: gap (crack width / image height), "
                        "depth (crack contrast 0-1), shift (step / shaft radius), hairline (share of "
                        "positives with a hairline crack: thinner, no step)")
    p.set_defaults(func=cmd_synth)

    p = verbs.add_parser("train", help="train a model; writes saved_models/<run>/", epilog=config_keys_epilog())
    add_config_arguments(p)
    p.set_defaults(func=cmd_train)

    p = verbs.add_parser("cv", help="patient-level k-fold cross-validation: one run per fold (folds=5)",
                         epilog=config_keys_epilog())
    add_config_arguments(p)
    p.set_defaults(func=_delegate("fracture.cv", "cli_cv"))

    p = verbs.add_parser("evaluate", help="re-evaluate a run at image and study level (validation split "
                                          "unless --split test)")
    p.add_argument("--run", help="run folder (default: newest in saved_models/)")
    p.add_argument("--split", default="val", choices=["train", "val", "test"],
                   help="val: the patient split carved from train, used for every choice; test: the held-out "
                        "final report (MURA's valid folder, or test/), spent only when named here")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. data_dir=... to evaluate on other data")
    p.add_argument("--mlflow-run", nargs="?", const="recorded", default=None, metavar="RUN_ID",
                   help="log to the MLflow run this folder recorded (or RUN_ID) even when the folder was moved "
                        "or copied since; without it a copied folder's results stay out of MLflow")
    p.set_defaults(func=cmd_evaluate)

    p = verbs.add_parser("predict", help="fracture probability for image files or folders")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--run", help="run folder (default: newest in saved_models/)")
    p.add_argument("--model", help="an exported model.onnx instead of a run: runs on onnxruntime, without Keras")
    p.set_defaults(func=cmd_predict)

    p = verbs.add_parser("cam", help="class activation maps (and --evaluate for localization scores)")
    p.add_argument("--run", help="run folder (default: newest in saved_models/)")
    p.add_argument("--images", nargs="*", default=[], help="image files or folders (default: a few test images)")
    p.add_argument("--layers", default="relu", help="comma list of layer names")
    from fracture.cam import methods as cam_methods, pixels  # names and defaults live there (fracture is imported already)

    p.add_argument("--methods", default="default",
                   help=f"comma list of {', '.join(cam_methods.METHODS)}; 'default' = "
                        f"{','.join(cam_methods.DEFAULT_METHODS)}; 'all' = every method (one panel file per layer)")
    p.add_argument("--eigen-smooth", action="store_true",
                   help="layer maps: first principal component of the weighted activations instead of their sum")
    p.add_argument("--aug-smooth", action="store_true",
                   help="average the maps over a left-right flip x pixel intensity 0.9/1/1.1 (6 passes)")
    p.add_argument("--ig-baseline", default=pixels.IG_BASELINE, choices=pixels.IG_BASELINES,
                   help="baseline image of intgrad and fill of occlusion")
    p.add_argument("--target", default="fracture", choices=["fracture", "normal"], help="class the maps explain")
    p.add_argument("--out", default="layer_outputs", help="folder for layer_outputs/<run>/<image>/...")
    p.add_argument("--evaluate", action="store_true", help="pointing game, energy-in-box, deletion/insertion")
    p.add_argument("--sanity", action="store_true",
                   help="randomize the weights top-down and compare the maps -> <run>/cam_sanity.csv")
    p.add_argument("--split", default="test", choices=["val", "test"],
                   help="images for --evaluate and the default panels: test = MURA's valid folder, "
                        "val = the patient split carved from train")
    p.add_argument("--limit", type=int, default=0, help="at most this many images (0 = all)")
    p.add_argument("--steps", type=int, default=16,
                   help="--evaluate: steps of the deletion/insertion curves; 0 = skip them (localization only, "
                        "about a third of the time)")
    from fracture.cam import draw  # the panels' defaults live there (fracture is imported already)

    p.add_argument("--colormap", default=draw.COLORMAP, help="overlay colormap, a matplotlib name (turbo, inferno...)")
    p.add_argument("--alpha", type=float, default=draw.ALPHA, help="weight of the map over the X-ray, 0..1")
    p.add_argument("--scale", default="map", choices=draw.SCALES,
                   help="map: each map to its own [0, 1] (shape only); shared: one scale per method x layer "
                        "over the images, so weak evidence stays dim")
    p.add_argument("--dpi", type=int, default=draw.DPI, help="resolution of panel.png and features__*.png")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="run config overrides before the options, e.g. data_dir=... for moved data")
    p.set_defaults(func=_delegate("fracture.cam", "cli_cam"))

    p = verbs.add_parser("serve", help="web app: upload an X-ray, get probability + CAM")
    p.add_argument("--run", help="run folder (default: newest in saved_models/)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="8000: mlflow ui takes 5000")
    p.add_argument("--model", help="an exported model.onnx instead of a run: onnxruntime, no Keras, no CAM")
    p.add_argument("--dev", action="store_true", help="Flask's development server (Werkzeug) instead of gunicorn")
    p.add_argument("--workers", type=int, default=1, help="gunicorn worker processes (each loads the model)")
    p.add_argument("--threads", type=int, default=4, help="threads per worker (model calls share one lock)")
    p.add_argument("--request-timeout", type=float, default=30.0,
                   help="seconds a client may take to send a request's headers and body before it is cut off")
    p.set_defaults(func=_delegate("fracture.app", "cli_serve"))

    p = verbs.add_parser("export", help="the run's model as ONNX, TF SavedModel or LiteRT -> <run>/export/<format>/")
    p.add_argument("--run", help="run folder (default: newest in saved_models/)")
    p.add_argument("--format", required=True, choices=["onnx", "tf_saved_model", "litert"])
    p.set_defaults(func=_delegate("fracture.export", "cli_export"))

    p = verbs.add_parser("report", help="one self-contained HTML report of a run -> <run>/report.html")
    p.add_argument("--run", help="run folder (default: newest in saved_models/)")
    p.add_argument("--cam-out", default="layer_outputs", help="where `cam` wrote the run's panels")
    p.add_argument("--failures", type=int, default=3,
                   help="most confident false negatives and false positives shown, each")
    p.set_defaults(func=_delegate("fracture.report", "cli_report"))

    p = verbs.add_parser("ensemble", help="average runs' probabilities (and flip TTA) into an ensemble folder")
    p.add_argument("--runs", nargs="+", required=True, help="run names (in --runs-dir) or folders, two or more")
    p.add_argument("--tta", default="none", choices=["none", "flip"], help="flip: also average horizontal flips")
    p.add_argument("--threshold", help="a number or auto (chosen on val); default: auto when any member used "
                                       "auto, else the members' threshold")
    p.add_argument("--name", default="", help="folder name (default: ensemble-<timestamp>)")
    p.add_argument("--runs-dir", default="saved_models")
    p.add_argument("--force", action="store_true", help="replace an existing ensemble folder of that --name")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="data overrides for every member, before the options, e.g. data_dir=... for moved data")
    p.set_defaults(func=_delegate("fracture.ensemble", "cli_ensemble"))

    p = verbs.add_parser("runs", help="best MLflow runs as a table")
    p.add_argument("--sort", default="val_study_auc",
                   help="metric to sort by (descending); compare runs on validation, test is the final report")
    p.add_argument("--limit", type=int, default=10)
    p.add_argument("--experiment", default="fracture")
    p.set_defaults(func=_delegate("fracture.tracking", "cli_runs"))
    return parser


def _delegate(module: str, function: str):
    """A verb implemented next to its feature; imported only when that verb runs."""

    def run(args):
        import importlib

        return getattr(importlib.import_module(module), function)(args)

    return run


def main(argv=None) -> int:
    # The program entry sets the process-wide defaults (the one library exception is
    # tracking._http_limits, which bounds MLflow's HTTP retries for the length of one call): quiet
    # TensorFlow's C++ start-up logging before anything imports TensorFlow. A user's value wins.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")

    try:
        check_backend_variable()
        if hasattr(args, "overrides") and args.verb != "evaluate":
            config_lib.parse_overrides(args.overrides)  # unknown keys fail before heavy imports
        args.func(args)
    except FractureError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk or read-only folder at a write site with no message of its own
        storage = diskspace.storage_error(exc, exc.filename or "a run file")
        if storage is None:
            raise
        print(f"error: {storage}", file=sys.stderr)
        return 2
    return 0


KERAS_BACKENDS = ("tensorflow", "jax", "torch", "numpy", "openvino")


def check_backend_variable() -> None:
    """KERAS_BACKEND=<typo> makes `import keras` raise deep inside; say it here, before the import."""
    value = os.environ.get("KERAS_BACKEND")
    if value is not None and value not in KERAS_BACKENDS:
        raise FractureError(f"KERAS_BACKEND={value!r} is not a Keras backend: use one of {', '.join(KERAS_BACKENDS)} "
                            "(or unset it for tensorflow)")
