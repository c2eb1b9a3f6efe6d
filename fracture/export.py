"""`python -m fracture export`: a run's model in a format a deployment stack runs without Keras.

    python -m fracture export --run saved_models/<run> --format onnx            # export/onnx/model.onnx
    python -m fracture export --run saved_models/<run> --format tf_saved_model  # export/tf_saved_model/
    python -m fracture export --run saved_models/<run> --format litert          # export/litert/model.tflite

Each is written by Keras's own `model.export` from an *inference graph* of the run's model: the
same layers and weights, with the training-only augmentation layers replaced by identities (their
random ops would otherwise be traced into the graph, and ONNX has no such ops) and the backbone's
Normalization replaced by the equal Rescaling (tf2onnx turns the Normalization's constant mean and
variance into extra graph inputs), called with training=False inside the graph (so no exporter
can trace BatchNormalization in training mode). The export test checks the result against model.keras.

Every export takes the model's own input, raw grayscale pixels 0-255 as float32 (N, S, S, 1), and
returns the fracture probability (N, 1). uint8 pixels convert to float32 exactly; the runtimes
in `fracture.onnx_serving` do that themselves, and the SavedModel also has a `serve_uint8`
signature. `export/<format>/fracture.json` (and, for ONNX, the model's own metadata) records the
run, the threshold and the input contract, so `predict --model` needs nothing else.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from fracture import __version__
from fracture.errors import FractureError

log = logging.getLogger(__name__)

FORMATS = {  # format -> (the file inside export/<format>/ that a runtime opens, what runs it)
    "onnx": ("model.onnx", "onnxruntime"),
    "tf_saved_model": (".", "TensorFlow (tf.saved_model.load, TF Serving)"),
    "litert": ("model.tflite", "the LiteRT interpreter (ai-edge-litert)"),
}
METADATA_FILE = "fracture.json"
INPUT_NAME = "image"  # the model's input layer name, hence the exported graphs' input name


class ExportError(FractureError):
    """An export the installed packages or the backend cannot make."""


def inference_model(model):
    """`model` as an inference-only graph sharing its layers and weights (module doc)."""
    import keras
    import numpy as np

    from fracture.model import PREPROCESS_LAYERS  # here, not at the top: it loads Keras, which this module does not

    augmentation = {name for name in PREPROCESS_LAYERS if name.startswith("augment_")}

    def clone(layer):
        if layer.name in augmentation:
            return keras.layers.Identity(name=layer.name)
        if isinstance(layer, keras.layers.Normalization):
            # (x - mean) / sqrt(variance) == x * (1 / sd) + (-mean / sd), per channel
            mean = np.asarray(keras.ops.convert_to_numpy(layer.mean), np.float64).reshape(-1)
            sd = np.sqrt(np.asarray(keras.ops.convert_to_numpy(layer.variance), np.float64).reshape(-1))
            return keras.layers.Rescaling(scale=(1 / sd).tolist(), offset=(-mean / sd).tolist(), name=layer.name)
        return layer  # the trained layer itself: its weights are shared, not copied

    cloned = keras.models.clone_model(model, clone_function=clone)
    # training=False fixed inside the graph: Keras's ONNX export (TensorFlow backend) traces
    # `model.__call__` without it, and that trace ran BatchNormalization on the batch's own
    # statistics (with moving-average updates), 0.07 away from model.keras on the tiny test run.
    inputs = keras.Input(model.input_shape[1:], name=INPUT_NAME)
    inference = keras.Model(inputs, cloned(inputs, training=False), name=model.name)
    # Keras exports only a model that has been called once (it traces that call's signature).
    inference(np.zeros((1, *model.input_shape[1:]), np.float32), training=False)
    return inference


def export_path(run_dir, fmt: str) -> Path:
    """The file or folder a runtime opens for `fmt` inside run_dir/export/<fmt>/."""
    return (Path(run_dir) / "export" / fmt / FORMATS[fmt][0]).resolve()


def metadata(run) -> dict:
    """What a deployment needs beside the graph: threshold, input contract, provenance."""
    import keras

    size = int(run.model.input_shape[1])
    return {
        "run": run.name,
        "backbone": run.config.backbone,
        "image_size": size,
        "threshold": run.threshold,
        "threshold_rule": run.metrics.get("threshold_rule", ""),
        "max_pixels": int(run.config.max_pixels),
        "input": f"raw grayscale pixels 0-255, float32 (N, {size}, {size}, 1); uint8 converts exactly",
        "input_name": INPUT_NAME,
        "output": "fracture probability (N, 1); abnormal when probability >= threshold",
        "preprocessing": f"decode to gray, stretch to 0-255, resize to {size}x{size} (fracture.imageio, "
                         "fracture.data.resize); the backbone's normalisation is inside the graph",
        "keras_version": keras.__version__,
        "keras_backend": keras.backend.backend(),
        "fracture_version": __version__,
        "intended_use": "research only; not a medical device",
    }


def export_run(run, fmt: str) -> Path:
    """Write run/export/<fmt>/ (replacing an older one only once the new one is complete)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    folder = run.path / "export" / fmt
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{fmt}-", dir=folder.parent))
    try:
        info = metadata(run)
        target = staging / FORMATS[fmt][0]
        _export(inference_model(run.model), target, fmt)
        if fmt == "onnx":
            _embed_onnx_metadata(target, info)
        (staging / METADATA_FILE).write_text(json.dumps(info, indent=2) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return export_path(run.path, fmt)


def _export(model, target: Path, fmt: str) -> None:
    import keras

    backend = keras.backend.backend()
    try:
        if fmt == "tf_saved_model" and backend == "tensorflow":
            _saved_model_with_uint8(model, target)
        else:
            model.export(str(target), format=fmt, verbose=False)
    except ImportError as exc:
        raise ExportError(f"the {fmt} export on the {backend} backend needs a package that is not installed "
                          f"({exc}); see docs/export.md") from exc
    except (ValueError, NotImplementedError) as exc:
        raise ExportError(f"Keras cannot export {fmt} on the {backend} backend: {exc} (docs/export.md lists "
                          "which formats work on which backend)") from exc


def _saved_model_with_uint8(model, target: Path) -> None:
    """A SavedModel with two signatures: `serving_default`/`serve` (float32, as model.export
    writes it) and `serve_uint8` (the same graph behind an exact cast), for clients with PNG pixels."""
    import keras
    import tensorflow as tf

    shape = (None, *model.input_shape[1:])
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", lambda x: model(x, training=False),
                         input_signature=[tf.TensorSpec(shape, tf.float32, name=INPUT_NAME)])
    archive.add_endpoint("serve_uint8", lambda x: model(tf.cast(x, tf.float32), training=False),
                         input_signature=[tf.TensorSpec(shape, tf.uint8, name=INPUT_NAME)])
    archive.write_out(str(target), verbose=False)


def _embed_onnx_metadata(path: Path, info: dict) -> None:
    """The metadata as ONNX metadata_props (strings), so a lone model.onnx is self-describing."""
    import onnx

    graph = onnx.load(str(path))
    del graph.metadata_props[:]
    for key, value in info.items():
        graph.metadata_props.add(key=key, value=str(value))
    graph.doc_string = "fracture: " + info["output"]
    onnx.save(graph, str(path))


def cli_export(args) -> None:
    from fracture.runs import load_run  # here, not at the top: it loads Keras, which this module does not

    run = load_run(args.run)
    path = export_run(run, args.format)
    print(f"{args.format}: {path}")
    print(f"runs on {FORMATS[args.format][1]}; input {metadata(run)['input']}")
