"""The web app: upload an X-ray or a study, get the fracture probability and where the model looked.

    python -m fracture serve --run saved_models/<run>          # gunicorn, with request timeouts (fracture/serving.py)
    python -m fracture serve --dev --run saved_models/<run>    # Flask's development server
    FRACTURE_RUN=saved_models/<run> gunicorn -w 1 --threads 4 --timeout 300 \\
        -b 127.0.0.1:8000 'fracture.app:create_app()'          # gunicorn by hand (no request timeout)

`create_app` loads the run once, compiles the forward pass and warms it (and every offered CAM
layer) up, so no request pays for loading or tracing. One lock serialises the model calls: simple
and safe whatever the backend does with concurrent calls; its cost under load is measured in
docs/benchmarks.md, "Web app latency".

Uploads are parsed into memory (`MemoryRequest`), never spooled to a temporary file, and nothing
the client sends (file name, form fields, query) is ever used as a path: the run comes from the
server's own arguments or environment.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import math
import os
import threading
import time
from pathlib import Path

import numpy as np
from flask import Flask, jsonify, request
from werkzeug.exceptions import ClientDisconnected, HTTPException

from fracture import cam, imageio, scores, serving
from fracture.cam import draw
from fracture.cam.checks import cam_layers
from fracture.cam.metrics import box_list, boxes_by_path
from fracture.data import resize
from fracture.errors import FractureError, ImageError
from fracture.onnx_serving import OnnxPredictor
from fracture.report import REPORT_FILE
from fracture.scores import study_level

log = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_MB = 20.0  # larger request bodies get 413
DEFAULT_MAX_PIXELS = imageio.DEFAULT_MAX_PIXELS  # header width x height above this is a decompression bomb -> 400
DEFAULT_MAX_STUDY_IMAGES = 16  # more files in one study request get 400 (MURA studies hold 1 to ~10 views)
DISPLAY_SIZE = 512  # long side of the images the API sends back (preview, CAM overlay)
CAM_METHOD = "gradcam"
CAM_COLORMAP = draw.COLORMAP  # the CAM panels' colormap; /api/model sends its colours for the page's legend
CAM_ALPHA = draw.ALPHA  # heatmap weight in cam_png, as in the panels (the page blends image_png and heatmap_png)
MAX_NAME_CHARS = 120  # file names are echoed back (never used as paths), cut to this length
# Words for the page's layer menu: where the layer sits. Known names get their place in the
# architecture; any other offered layer its rank (the offered list is deepest first).
LAYER_PLACES = {
    "relu": "last block", "pool4_relu": "after dense block 3", "pool3_relu": "after dense block 2",
    "post_relu": "last block", "top_activation": "last block", "mixed10": "last block",
    "block5_conv4": "last block", "block14_sepconv2_act": "last block",
}
RANK_PLACES = ("deepest layer", "a middle layer", "an earlier layer")
RANK_GRAIN = ("coarse", "medium", "fine")
TRUE_WORDS = ("1", "true", "yes", "on")


class UnknownLayer(FractureError):
    """A CAM layer the app does not offer (answered with 400)."""


class MemoryRequest(Flask.request_class):
    """Keep uploaded file parts in memory. Werkzeug's default spools parts over 500 KB to a
    temporary file on disk; MAX_CONTENT_LENGTH bounds the memory this takes."""

    def _get_file_stream(self, total_content_length, content_type, filename=None, content_length=None):
        return io.BytesIO()


# --------------------------------------------------------------------------------------------
# images: decoded by fracture.imageio.decode_gray, the decoder of training and the CLI
# --------------------------------------------------------------------------------------------
def display_image(gray: np.ndarray, long_side: int = DISPLAY_SIZE) -> np.ndarray:
    """`gray` scaled (aspect kept) so its long side is at most `long_side`."""
    import cv2

    height, width = gray.shape[:2]
    scale = long_side / max(height, width)
    if scale >= 1:
        return gray
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(gray, size, interpolation=cv2.INTER_AREA)


def png_base64(image: np.ndarray) -> str:
    """Gray or RGB uint8 -> base64 PNG (fast compression: the network is local, CPU is not)."""
    import cv2

    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA if image.shape[2] == 4 else cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise FractureError("could not encode the result image as PNG")
    return base64.b64encode(encoded.tobytes()).decode("ascii")


def dataset_boxes(cfg) -> dict:
    """{sha1 of an image file's bytes: [(x0, y0, x1, y1), ...]} for the run's data that has fracture
    boxes (synthetic MURA, COCO, YOLO): an upload is recognised by its content, whatever its name."""
    try:
        boxes = boxes_by_path(cfg)
    except (FractureError, OSError) as exc:
        log.debug("no dataset boxes for the web app: %s", exc)
        return {}
    out = {}
    for path, box in boxes.items():
        try:
            out[hashlib.sha1(Path(path).read_bytes()).hexdigest()] = box_list(box)
        except OSError:
            continue
    log.info("%d images of the run's data have fracture boxes; uploads of them show their boxes", len(out))
    return out


def boxes_layer(shape, boxes, original_shape) -> np.ndarray:
    """A transparent RGBA picture of `shape` (the displayed image's) with each box, scaled from
    the original's pixels, drawn as a dashed lime outline (the CAM panels' colour)."""
    h, w = shape[:2]
    sy, sx = h / original_shape[0], w / original_shape[1]
    layer = np.zeros((h, w, 4), np.uint8)
    colour, dash = (50, 205, 50, 255), max(3, round(max(h, w) / 80))
    for x0, y0, x1, y1 in boxes:
        x0, x1 = int(x0 * sx), max(int(x0 * sx) + 1, min(w - 1, round(x1 * sx) - 1))
        y0, y1 = int(y0 * sy), max(int(y0 * sy) + 1, min(h - 1, round(y1 * sy) - 1))
        for start in range(x0, x1 + 1, 2 * dash):
            layer[[y0, y1], start:min(start + dash, x1 + 1)] = colour
        for start in range(y0, y1 + 1, 2 * dash):
            layer[start:min(start + dash, y1 + 1), [x0, x1]] = colour
    return layer


def json_safe(value):
    """NaN/inf -> None, recursively: JSON has no NaN and browsers reject it."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


# --------------------------------------------------------------------------------------------
# the model side: loaded once, compiled once, called under one lock
# --------------------------------------------------------------------------------------------
def layer_label(model, name: str, rank: int) -> str:
    """Readable name of an offered CAM layer, e.g. "last block (coarse, 7x7 grid)"."""
    place = LAYER_PLACES.get(name) or RANK_PLACES[min(rank, len(RANK_PLACES) - 1)]
    grain = RANK_GRAIN[min(rank, len(RANK_GRAIN) - 1)]
    height, width = tuple(model.get_layer(name).output.shape)[1:3]
    return f"{place} ({grain}, {height}\u00d7{width} grid)"


def colormap_colors(name: str = CAM_COLORMAP, steps: int = 11) -> list[str]:
    """`steps` evenly spaced colours of a matplotlib colormap as #rrggbb, low to high."""
    import matplotlib

    rgb = matplotlib.colormaps[name](np.linspace(0, 1, steps))[:, :3]
    return ["#" + "".join(f"{round(255 * c):02x}" for c in color) for color in rgb]


def study_probability(probabilities) -> float:
    """A study's probability exactly as evaluation computes it: `scores.study_level` on one study.
    (Uploads carry no label; study_level needs the column, so it gets a constant placeholder.)"""
    import pandas as pd

    frame = pd.DataFrame({"study": "upload", "label": 0, "probability": np.asarray(probabilities, np.float64)})
    return float(study_level(frame)["probability"].iloc[0])


def compiled_forward(model):
    """x (B,S,S,1) float32 -> probabilities, with training=False (the in-model augmentation would
    run otherwise). tf.function on TensorFlow (about 1.5x faster than predict_on_batch at batch
    1); other backends use predict_on_batch, which they compile themselves."""
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        shape = (None, *model.input_shape[1:])
        function = tf.function(lambda x: model(x, training=False), reduce_retracing=True,
                               input_signature=[tf.TensorSpec(shape, tf.float32)])
        return lambda x: np.asarray(function(x))
    return lambda x: np.asarray(model.predict_on_batch(x))


class Predictor:
    """A loaded run ready to serve: probability and CAMs for one grayscale image at a time."""

    def __init__(self, run):
        self.run = run
        self.model = run.model
        self.size = int(self.model.input_shape[1])
        if self.size != int(run.config.image_size):
            log.warning("run %s: config image_size=%s but the model takes %s px; using the model's",
                        run.name, run.config.image_size, self.size)
        self.threshold = run.threshold  # for threshold=auto: the one chosen on validation
        self.layers = cam_layers(self.model, run.config.backbone)
        self._forward = compiled_forward(self.model)
        self._lock = threading.Lock()

    def prepare(self, gray: np.ndarray) -> np.ndarray:
        return resize(gray, self.size).astype(np.float32)[None, :, :, None]

    def probability(self, x: np.ndarray) -> float:
        with self._lock:
            return float(self._forward(x).reshape(-1)[0])

    def probability_and_cam(self, x: np.ndarray, layer: str) -> tuple[float, np.ndarray]:
        """The probability and the Grad-CAM heatmap (S, S) in [0, 1] of `layer` for the fracture
        class, from one pass: the CAM's gradient step computes the logit anyway, so a separate
        forward pass would double the cost. Equal to `cam.cam_maps` + `model.predict` (tested)."""
        with self._lock:
            maps, logits = cam.maps_and_logits(self.model, x, layer, CAM_METHOD)
        return scores.probability(float(logits[0])), maps[0]

    def warm_up(self) -> float:
        """One dummy prediction and one dummy CAM per offered layer (traces and caches them all)."""
        started = time.perf_counter()
        x = np.full((1, self.size, self.size, 1), 128.0, np.float32)
        self.probability(x)
        for layer in self.layers:
            self.probability_and_cam(x, layer)
        return time.perf_counter() - started

    def verdict(self, probability: float) -> dict:
        """label (the rule evaluate and the CAM panels use), uncertain flag and its wording."""
        verdict = scores.verdict(probability, self.threshold)
        return {"label": verdict.label, "uncertain": verdict.uncertain, "verdict": verdict.text}

    def describe(self) -> dict:
        cfg, metrics = self.run.config, self.run.metrics
        summary = {}
        for split in ("val", "test"):
            if isinstance(metrics.get(split), dict):
                summary[split] = {level: {k: scores.get(k) for k in ("n", "auc", "kappa", "accuracy",
                                                                    "sensitivity", "specificity")}
                                  for level, scores in metrics[split].items() if isinstance(scores, dict)}
        return json_safe({
            "run": self.run.name,
            "backbone": cfg.backbone,
            "image_size": self.size,
            "threshold": self.threshold,
            "weights": cfg.weights,
            "cam_method": CAM_METHOD,
            "cam_layers": self.layers,
            "cam_layer_labels": {name: layer_label(self.model, name, rank) for rank, name in enumerate(self.layers)},
            "default_layer": self.layers[0] if self.layers else None,
            "cam_colormap": {"name": CAM_COLORMAP, "colors": colormap_colors()},
            "uncertain_band": scores.UNCERTAIN_BAND,
            "training": {k: metrics.get(k) for k in ("best_epoch", "epochs_run", "train_seconds", "counts")
                         if k in metrics},
            "metrics": summary,
        })


# --------------------------------------------------------------------------------------------
# the Flask app
# --------------------------------------------------------------------------------------------
def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return float(value)
    except ValueError:
        raise FractureError(f"environment variable {name}={value!r} is not a number") from None


def _error(status: int, message: str, name: str | None = None):
    from werkzeug.http import HTTP_STATUS_CODES

    body = {"error": name or HTTP_STATUS_CODES.get(status, "Error"), "message": message, "status": status}
    return jsonify(body), status


def create_app(run=None, max_upload_mb: float | None = None, max_pixels: int | None = None,
               runs_dir: str | None = None, warm_up: bool = True, max_study_images: int | None = None,
               predictor=None) -> Flask:
    """The Flask app serving one run.

    run: a run folder (or its model.keras), a loaded `Run`, or None for $FRACTURE_RUN, else the
    newest run in `runs_dir` ($FRACTURE_RUNS_DIR, default saved_models/). max_upload_mb
    ($FRACTURE_MAX_UPLOAD_MB, default 20) and max_pixels ($FRACTURE_MAX_PIXELS, default the run's
    `max_pixels`, as in training and `predict`, so all three refuse the same files) are
    stored in app.config (MAX_CONTENT_LENGTH, MAX_PIXELS) and read on every request, as is
    max_study_images ($FRACTURE_MAX_STUDY_IMAGES, default 16; MAX_STUDY_IMAGES): files per study.
    The upload limit bounds a whole request, so a study's files share it.
    predictor: an `onnx_serving.OnnxPredictor` (or $FRACTURE_MODEL, a model.onnx, when neither run
    nor $FRACTURE_RUN is given) serves an exported model on onnxruntime, without Keras or CAMs.
    """
    if not logging.getLogger().handlers:  # gunicorn / flask run: make the start-up lines visible
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if predictor is None and not run and not os.environ.get("FRACTURE_RUN") and os.environ.get("FRACTURE_MODEL"):
        predictor = OnnxPredictor(os.environ["FRACTURE_MODEL"])
    if predictor is not None:
        run = predictor.run
        log.info("serving %s on onnxruntime (no CAM)", run.path)
    else:
        from fracture.runs import Run, load_run  # here, not at the top: it loads Keras, which this module does not

        if not isinstance(run, Run):
            source = "argument" if run else ("$FRACTURE_RUN" if os.environ.get("FRACTURE_RUN") else None)
            runs_dir = runs_dir or os.environ.get("FRACTURE_RUNS_DIR", "saved_models")
            run = load_run(run or os.environ.get("FRACTURE_RUN") or None, runs_dir=runs_dir)
            log.info("serving run %s (%s)", run.path, f"from {source}" if source else f"newest in {runs_dir}/")
        predictor = Predictor(run)
    if warm_up:
        log.info("warmed up (predict + %s on %s) in %.1f s", CAM_METHOD, ", ".join(predictor.layers),
                 predictor.warm_up())

    app = Flask(__name__)  # static files: fracture/static/
    app.request_class = MemoryRequest
    if max_upload_mb is None:
        max_upload_mb = _env_float("FRACTURE_MAX_UPLOAD_MB", DEFAULT_MAX_UPLOAD_MB)
    if max_pixels is None:
        max_pixels = int(_env_float("FRACTURE_MAX_PIXELS", run.config.max_pixels))
    app.config["MAX_CONTENT_LENGTH"] = int(max_upload_mb * 1024 * 1024)
    app.config["MAX_PIXELS"] = int(max_pixels)
    if max_study_images is None:
        max_study_images = int(_env_float("FRACTURE_MAX_STUDY_IMAGES", DEFAULT_MAX_STUDY_IMAGES))
    app.config["MAX_STUDY_IMAGES"] = int(max_study_images)
    app.extensions["fracture"] = predictor

    @app.get("/")
    def index():
        return app.send_static_file("index.html")

    @app.get("/healthz")
    def healthz():
        return jsonify(status="ok", run=run.name)

    @app.get("/api/model")
    def model_info():
        info = predictor.describe()
        info["max_upload_mb"] = round(app.config["MAX_CONTENT_LENGTH"] / 1024 / 1024, 3)
        info["max_pixels"] = app.config["MAX_PIXELS"]
        info["max_study_images"] = app.config["MAX_STUDY_IMAGES"]
        info["cam_alpha"] = CAM_ALPHA  # the page's opacity slider starts here (one source: cam.draw.ALPHA)
        if report_file():
            info["report"] = "report"  # relative: works behind a path prefix too
        return jsonify(info)

    def report_file():
        path = Path(run.path) / REPORT_FILE
        return path if Path(run.path).is_dir() and path.is_file() else None

    @app.get("/report")
    def report():
        """The run's report.html (`python -m fracture report`): self-contained, so its inline
        styles and data: images are allowed on this one page."""
        from flask import send_file

        path = report_file()
        if path is None:
            return _error(404, f"no report for run {run.name}: write it with "
                               f"`python -m fracture report --run {run.path}`")
        response = send_file(path, mimetype="text/html", max_age=0)
        response.headers["Content-Security-Policy"] = (
            "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'")
        return response

    def analyse(data: bytes, want_cam: bool, want_image: bool, layer: str) -> tuple[dict, float]:
        """One upload -> (answer: rounded probability, verdict, size and the requested pictures;
        the unrounded probability, which the study mean uses). Header size check,
        truncation check, decode: the same function as training and predict, so the model sees the
        same input for the same file; every failure is an ImageError (400, or a per-file error)."""
        gray = imageio.decode_gray(data, app.config["MAX_PIXELS"])
        height, width = gray.shape
        x = predictor.prepare(gray)
        if want_cam:
            probability, heatmap = predictor.probability_and_cam(x, layer)
        else:
            probability = predictor.probability(x)
        rounded = round(probability, 6)  # the two paths agree to ~1e-7; more digits are noise
        body = {"probability": rounded, **predictor.verdict(rounded), "image": {"width": width, "height": height}}
        shown = display_image(gray) if (want_cam or want_image) else None
        if want_cam:
            body["cam_png"] = png_base64(cam.overlay(shown, heatmap, CAM_COLORMAP, CAM_ALPHA))
            # the colormapped heatmap alone (alpha 1): the page lays it over image_png with an
            # opacity slider; at opacity CAM_ALPHA the two give cam_png
            body["heatmap_png"] = png_base64(cam.overlay(shown, heatmap, CAM_COLORMAP, 1.0))
        if want_image:
            body["image_png"] = png_base64(shown)
        if want_cam or want_image:
            boxes = known_boxes().get(hashlib.sha1(data).hexdigest())
            if boxes:  # a file of the run's own dataset: its true fracture boxes, for comparison
                body["boxes"] = [list(b) for b in boxes]
                body["boxes_png"] = png_base64(boxes_layer(shown.shape, boxes, gray.shape))
        return body, probability

    def known_boxes() -> dict:
        if "boxes" not in app.config:  # on first use: hashing a dataset's files takes a moment
            app.config["boxes"] = dataset_boxes(run.config)
        return app.config["boxes"]

    def cam_request() -> tuple[bool, bool, str]:
        want_cam = request.args.get("cam", "").lower() in TRUE_WORDS
        want_image = request.args.get("image", "").lower() in TRUE_WORDS
        layer = request.args.get("layer") or (predictor.layers[0] if predictor.layers else "")
        if want_cam and not predictor.layers:
            raise UnknownLayer(getattr(predictor, "cam_note", "this model offers no CAM layer"))
        if want_cam and layer not in predictor.layers:
            raise UnknownLayer(f"unknown CAM layer {layer[:80]!r}; choose one of {', '.join(predictor.layers)}")
        return want_cam, want_image, layer

    @app.post("/api/predict")
    def predict():
        started = time.perf_counter()
        want_cam, want_image, layer = cam_request()
        upload = request.files.get("file")
        if upload is None:
            return _error(400, "no file: send the image as multipart/form-data in a field named 'file'")
        body, _ = analyse(upload.read(), want_cam, want_image, layer)
        body.update(threshold=predictor.threshold, run=run.name)
        if want_cam:
            body["layer"], body["method"] = layer, CAM_METHOD
        body["elapsed_ms"] = round((time.perf_counter() - started) * 1000, 1)
        return jsonify(body)

    @app.post("/api/study")
    def study():
        """Several images of one study: each image's answer, and the study's probability as
        evaluation computes it (scores.study_level: the mean of its images' probabilities).
        An unreadable file gets its own error; the others are still answered."""
        started = time.perf_counter()
        want_cam, want_image, layer = cam_request()
        uploads = request.files.getlist("files") + request.files.getlist("file")
        limit = app.config["MAX_STUDY_IMAGES"]
        if not uploads:
            return _error(400, "no files: send the study's images as multipart/form-data, each in a field named 'files'")
        if len(uploads) > limit:
            return _error(400, f"{len(uploads)} files; a study takes at most {limit} images")
        images, probabilities = [], []
        for upload in uploads:
            name = (upload.filename or "")[:MAX_NAME_CHARS]
            try:
                answer, probability = analyse(upload.read(), want_cam, want_image, layer)
            except ImageError as exc:
                images.append({"name": name, "error": "Bad image", "message": str(exc)})
                continue
            images.append({"name": name, **answer})
            probabilities.append(probability)
        body = {"images": images, "threshold": predictor.threshold, "run": run.name,
                "uncertain_band": scores.UNCERTAIN_BAND}
        if want_cam:
            body["layer"], body["method"] = layer, CAM_METHOD
        if not probabilities:
            reasons = "; ".join(f"{image['name'] or 'file ' + str(i + 1)}: {image['message']}"
                                for i, image in enumerate(images))
            message = images[0]["message"] if len(images) == 1 else \
                f"none of the {len(images)} files is a readable image ({reasons})"
            body.update(error="Bad image", status=400, message=message)
            return jsonify(body), 400
        rounded = round(study_probability(probabilities), 6)
        body["study"] = {"probability": rounded, **predictor.verdict(rounded),
                         "images": len(probabilities), "failed": len(images) - len(probabilities)}
        body["elapsed_ms"] = round((time.perf_counter() - started) * 1000, 1)
        return jsonify(json_safe(body))

    @app.errorhandler(UnknownLayer)
    def unknown_layer(exc):
        return _error(400, str(exc))

    @app.errorhandler(ImageError)
    def bad_image(exc):
        return _error(400, str(exc), "Bad image")

    @app.errorhandler(HTTPException)
    def http_error(exc):
        messages = {413: too_large_message(),
                    405: f"method {request.method} not allowed on {request.path[:200]}"}
        return _error(exc.code or 500, messages.get(exc.code, exc.description or exc.name), exc.name)

    def too_large_message() -> str:
        """Which limit a 413 hit: the body size, or (for a body within it) the form's part count or
        its non-file fields, which Werkzeug limits separately."""
        limit = app.config["MAX_CONTENT_LENGTH"]
        declared = request.content_length
        if declared is None or declared > limit:
            return f"upload larger than the {limit / 1024 / 1024:.3g} MB limit (for all files of a request together)"
        parts = app.config.get("MAX_FORM_PARTS") or 1000  # Werkzeug's default
        memory = app.config.get("MAX_FORM_MEMORY_SIZE") or 500_000
        return (f"the form has more than {parts} parts, or a non-file field over {memory / 1000:.0f} KB "
                f"(the upload itself, {declared / 1024 / 1024:.3g} MB, is within the limit): send the image(s) "
                "in fields named 'file' or 'files' only")

    @app.errorhandler(ClientDisconnected)  # how Werkzeug reports the body read that the timeout cut off
    @app.errorhandler(TimeoutError)
    def slow_client(exc):  # the server's request timeout (fracture/serving.py) cut off a stalled body
        response, _ = _error(408, "the request body did not arrive in time (the connection stalled)")
        response.headers["Connection"] = "close"
        return response, 408

    @app.errorhandler(Exception)
    def server_error(exc):
        log.exception("unhandled error on %s %s", request.method, request.path[:200])
        return _error(500, "internal error while handling the request (see the server log)")

    @app.after_request
    def headers(response):
        # Everything is served by this app; no CDN, no inline script, images also from data:/blob:.
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; frame-ancestors 'none'")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        if request.path.startswith("/api/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    return app


def cli_serve(args) -> None:
    """`python -m fracture serve`: gunicorn (fracture/serving.py); --dev: Flask's development server.
    --model serves an exported .onnx on onnxruntime (no Keras in the process)."""
    onnx = getattr(args, "model", None)
    if onnx and args.run:
        raise FractureError("give --run (a run's Keras model) or --model (an exported .onnx), not both")
    if onnx:
        if not Path(onnx).is_file():
            raise FractureError(f"--model {onnx}: no such file (export one with `python -m fracture export`)")

        def make_app():
            return create_app(predictor=OnnxPredictor(onnx))
    elif getattr(args, "dev", False):
        def make_app():
            return create_app(run=args.run)
    else:
        from fracture.runs import find_run  # here, not at the top: it loads Keras, which this module does not

        # A missing run is one error line here, not a worker that dies on start.
        run_dir = find_run(args.run or os.environ.get("FRACTURE_RUN") or None,
                           runs_dir=os.environ.get("FRACTURE_RUNS_DIR", "saved_models"))

        def make_app():
            return create_app(run=run_dir)
    if getattr(args, "dev", False):
        app = make_app()
        log.info("open http://%s:%s/ (development server)", args.host, args.port)
        app.run(host=args.host, port=args.port, threaded=True, debug=False, use_reloader=False)
        return

    settings = serving.options(args.host, args.port, args.workers, args.threads, args.request_timeout)
    log.info("open http://%s:%s/ (gunicorn: %d worker(s) x %d threads, %.0f s request timeout)", args.host, args.port,
             args.workers, args.threads, args.request_timeout)
    serving.run_gunicorn(make_app, settings)


_app = None


def __getattr__(name):
    """`fracture.app.app`, created on first access (gunicorn 'fracture.app:app')."""
    global _app
    if name == "app":
        if _app is None:
            _app = create_app()
        return _app
    raise AttributeError(f"module 'fracture.app' has no attribute {name!r}")
