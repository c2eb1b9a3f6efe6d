"""An exported model.onnx on onnxruntime: `predict --model x.onnx` and `serve --model x.onnx`.

Nothing here imports Keras, TensorFlow, JAX or PyTorch (a test checks sys.modules), so a server
needs only `pip install -r requirements-serve-onnx.txt` (docs/export.md). Images are decoded and
resized by the same functions as training (fracture.imageio, fracture.data.resize), and the
threshold, image size and pixel limit come from the metadata `export` wrote into the file.

Class activation maps need the Keras model (gradients of a layer's activations): an ONNX server
answers probabilities only, and its page says so.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from fracture import scores
from fracture.data import expand_image_paths, load_images, resize
from fracture.errors import FractureError

log = logging.getLogger(__name__)

CAM_NOTE = "Grad-CAM needs the Keras model: this server runs an exported ONNX model (probabilities only)."


class OnnxModel:
    """A model.onnx written by `python -m fracture export`, ready to predict raw pixels."""

    def __init__(self, path):
        path = Path(path)
        if path.suffix.lower() != ".onnx":
            raise FractureError(f"--model takes an exported .onnx file (python -m fracture export --format onnx), "
                                f"not {path.name}; for a run's Keras model use --run")
        if not path.is_file():
            raise FractureError(f"model file not found: {path}")
        try:
            import onnxruntime
        except ImportError as exc:
            raise FractureError("onnxruntime is not installed: pip install -r requirements-serve-onnx.txt "
                                "(or the .[serve-onnx] extra)") from exc
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's own errors (invalid graph, truncated file)
            raise FractureError(f"onnxruntime cannot load {path}: {exc}") from exc
        self.path = path
        self.info = self._metadata()
        (self.input,) = self.session.get_inputs()
        self.size = int(self.input.shape[1])
        self.threshold = float(self.info["threshold"])
        self.max_pixels = int(self.info.get("max_pixels", 40_000_000))
        self.name = str(self.info.get("run", path.stem))

    def _metadata(self) -> dict:
        """The model's metadata_props, else export/onnx/fracture.json beside it."""
        props = dict(self.session.get_modelmeta().custom_metadata_map)
        sidecar = self.path.with_name("fracture.json")
        if "threshold" not in props and sidecar.is_file():
            props = json.loads(sidecar.read_text())
        if "threshold" not in props:
            raise FractureError(f"{self.path} has no decision threshold in its metadata: export it with "
                                "`python -m fracture export --format onnx`")
        return props

    def predict(self, images) -> np.ndarray:
        """Probabilities (N,) for raw pixels (N, S, S, 1) or (N, S, S): uint8 or float 0-255 alike
        (uint8 -> float32 is exact, so both give the same numbers)."""
        x = np.asarray(images)
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4 or x.shape[1:] != (self.size, self.size, 1):
            raise FractureError(f"images of shape {x.shape}; this model takes (N, {self.size}, {self.size}, 1)")
        if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
            raise FractureError(f"images of dtype {x.dtype}; send uint8 or float pixels 0-255")
        if len(x) == 0:
            return np.zeros(0, np.float32)
        (out,) = self.session.run(None, {self.input.name: x.astype(np.float32, copy=False)})
        return np.asarray(out, np.float32).reshape(-1)


def predict_paths(model: OnnxModel, paths, batch_size: int = 16):
    """`evaluation.predict_paths` for an ONNX model: one row per file, unreadable ones with their reason."""
    import pandas as pd

    files = expand_image_paths(paths)
    images, ok, skipped = load_images(files, model.size, max_pixels=model.max_pixels)
    probabilities = np.full(len(files), np.nan)
    readable = images[ok]
    probabilities[ok] = np.concatenate([model.predict(readable[i:i + batch_size])
                                        for i in range(0, len(readable), batch_size)] or [np.zeros(0)])
    out = pd.DataFrame({"path": [str(f) for f in files], "probability": probabilities})
    out["label"] = np.where(ok, scores.label(probabilities, model.threshold), "unreadable")
    out["reason"] = out["path"].map(dict(zip(skipped["path"], skipped["reason"]))).fillna("")
    return out


class OnnxPredictor:
    """fracture.app's Predictor for an ONNX model: the same answers, without CAMs."""

    layers: list[str] = []
    cam_note = CAM_NOTE

    def __init__(self, path):
        self.model = OnnxModel(path)
        self.size = self.model.size
        self.threshold = self.model.threshold
        # what create_app reads from a run: its name, folder and pixel limit
        self.run = SimpleNamespace(name=self.model.name, path=self.model.path,
                                   config=SimpleNamespace(max_pixels=self.model.max_pixels))

    def prepare(self, gray: np.ndarray) -> np.ndarray:
        return resize(gray, self.size).astype(np.float32)[None, :, :, None]

    def probability(self, x: np.ndarray) -> float:
        return float(self.model.predict(x)[0])  # an InferenceSession may be run from several threads

    def probability_and_cam(self, x, layer):
        raise FractureError(CAM_NOTE)

    def warm_up(self) -> float:
        import time

        started = time.perf_counter()
        self.probability(np.full((1, self.size, self.size, 1), 128.0, np.float32))
        return time.perf_counter() - started

    def verdict(self, probability: float) -> dict:
        verdict = scores.verdict(probability, self.threshold)
        return {"label": verdict.label, "uncertain": verdict.uncertain, "verdict": verdict.text}

    def describe(self) -> dict:
        info = self.model.info
        return {
            "run": self.model.name, "backbone": info.get("backbone", ""), "image_size": self.size,
            "threshold": self.threshold, "weights": "", "runtime": "onnxruntime", "model_file": self.model.path.name,
            "cam_method": None, "cam_layers": [], "cam_layer_labels": {}, "default_layer": None,
            "cam_note": CAM_NOTE, "cam_colormap": {"name": "", "colors": ["#000000", "#000000"]},
            "uncertain_band": scores.UNCERTAIN_BAND, "training": {}, "metrics": {},
        }

