"""The web app through Flask's test client, against the session's tiny trained run (32 px).

Covers the four endpoints (with the study upload: per-image answers, the study mean, per-file
errors), PNG/JPEG/DICOM uploads, the CAM and layer flags, every bad-input case
(413, 400 with its reason, 405, 404, 500) as JSON, uploads never touching the disk, and identical
answers under concurrent requests.
"""

import base64
import builtins
import io
import os
import threading
from pathlib import Path

import time

import cv2
import flask
import numpy as np
import pytest

from fracture import app as app_module
from fracture.app import create_app
from tests.images import dicom_bytes, png_claiming

PREDICT_KEYS = {"probability", "label", "uncertain", "verdict", "threshold", "run", "elapsed_ms", "image"}


# --------------------------------------------------------------------------------------------
# fixtures and file builders
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run(trained_run):
    from fracture.runs import load_run

    return load_run(trained_run)


@pytest.fixture(scope="module")
def app(run):
    return create_app(run)  # warm-up included: predict + a CAM on every offered layer


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def xray(synth_root) -> np.ndarray:
    """A synthetic humerus X-ray (uint8 gray, not square), stretched to 0..255 so the decoder's
    per-image stretch leaves it unchanged and the batch path can be fed the same array."""
    path = sorted(Path(synth_root).glob("train/XR_HUMERUS/*/*_positive/*.png"))[0]
    gray = cv2.normalize(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE), None, 0, 255, cv2.NORM_MINMAX)
    assert gray.min() == 0 and gray.max() == 255
    return gray


def encode(gray, ext=".png") -> bytes:
    return cv2.imencode(ext, gray)[1].tobytes()


def post(client, data: bytes, query: str = "", filename="xray.png", field="file"):
    return client.post("/api/predict" + query, data={field: (io.BytesIO(data), filename)},
                       content_type="multipart/form-data")


def expected_probability(run, gray) -> float:
    """What the CLI's batch path (model.predict) says for the same image."""
    from fracture.data import resize
    from fracture.evaluation import predict_images

    return float(predict_images(run.model, resize(gray, run.config.image_size)[None, :, :, None])[0])


def png_size(b64: str) -> tuple[int, int]:
    image = cv2.imdecode(np.frombuffer(base64.b64decode(b64), np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None, "not a PNG"
    return image.shape[1], image.shape[0]


# --------------------------------------------------------------------------------------------
# the good paths
# --------------------------------------------------------------------------------------------
def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "run": "tiny"}


def test_model_info(client, run):
    response = client.get("/api/model")
    assert response.status_code == 200
    assert b"NaN" not in response.data  # JSON has no NaN; the browser's JSON.parse would fail
    info = response.get_json()
    assert info["backbone"] == "DenseNet121" and info["image_size"] == 32 and info["run"] == "tiny"
    assert info["cam_layers"][0] == info["default_layer"] == "relu"
    assert set(info["cam_layers"]) <= {layer.name for layer in run.model.layers}
    assert 1 <= len(info["cam_layers"]) <= 3
    assert set(info["metrics"]["test"]) == {"image", "study"}
    assert {"auc", "kappa", "accuracy", "n"} <= set(info["metrics"]["test"]["study"])
    assert info["max_upload_mb"] == 20 and info["max_pixels"] == app_module.DEFAULT_MAX_PIXELS
    assert info["max_study_images"] == 16 and info["uncertain_band"] == 0.05
    # readable names with each map's grid, from the layers' own output shapes (32 px input)
    shapes = {name: tuple(run.model.get_layer(name).output.shape[1:3]) for name in info["cam_layers"]}
    assert info["cam_layer_labels"]["relu"] == f"last block (coarse, {shapes['relu'][0]}\u00d7{shapes['relu'][1]} grid)"
    assert set(info["cam_layer_labels"]) == set(info["cam_layers"])
    colors = info["cam_colormap"]["colors"]
    assert info["cam_colormap"]["name"] == "jet" and len(colors) == 11
    assert colors[0] == "#000080" and colors[-1] == "#800000"  # jet: dark blue (low) to dark red (high)


def test_page_and_static_files_are_self_contained(client):
    page = client.get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    for asset in ("/static/app.js", "/static/style.css"):
        assert asset.encode() in page.data
        response = client.get(asset)
        assert response.status_code == 200
        assert b"http://" not in response.data and b"https://" not in response.data, f"{asset} loads from outside"
    assert b"http://" not in page.data and b"https://" not in page.data


@pytest.mark.parametrize("kind", ["png", "jpeg", "dicom"])
def test_predict_formats(client, run, xray, kind):
    data = {"png": lambda: encode(xray), "jpeg": lambda: encode(xray, ".jpg"),
            "dicom": lambda: dicom_bytes(xray.astype(np.uint16) * 16)}[kind]()
    response = post(client, data, filename=f"upload.{kind}")
    assert response.status_code == 200, response.get_json()
    answer = response.get_json()
    assert set(answer) == PREDICT_KEYS  # no CAM unless asked for
    assert 0.0 <= answer["probability"] <= 1.0
    assert answer["label"] == ("abnormal" if answer["probability"] > answer["threshold"] else "normal")
    assert answer["uncertain"] == (abs(answer["probability"] - answer["threshold"]) < 0.05)
    assert answer["threshold"] == run.config.threshold and answer["run"] == "tiny"
    assert answer["image"] == {"width": xray.shape[1], "height": xray.shape[0]}
    assert answer["elapsed_ms"] > 0
    if kind == "png":  # lossless: exactly what the batch path (model.predict, training=False) says
        assert answer["probability"] == pytest.approx(expected_probability(run, xray), abs=1e-5)


def test_cam_flag_and_layer_choice(client, app, xray):
    layers = app.extensions["fracture"].layers
    answers = {}
    for layer in layers:
        response = post(client, encode(xray), f"?cam=1&layer={layer}")
        assert response.status_code == 200, response.get_json()
        answers[layer] = answer = response.get_json()
        assert answer["layer"] == layer and answer["method"] == "gradcam"
        assert png_size(answer["cam_png"]) == (xray.shape[1], xray.shape[0])  # overlay at the image's size
    assert len({a["probability"] for a in answers.values()}) == 1
    # (at 32 px the maps are degenerate, 1x1 to 4x4: that the layer matters is tested at 64 px below)
    default = post(client, encode(xray), "?cam=true").get_json()
    assert default["layer"] == layers[0] and default["cam_png"] == answers[layers[0]]["cam_png"]
    assert "cam_png" not in post(client, encode(xray), "?cam=0").get_json()


def test_heatmap_png_blends_back_into_the_overlay(client, xray):
    """The page lays heatmap_png over image_png with CSS opacity; at the app's alpha that blend
    must give cam_png (the overlay drawn on the server): (1 - a) * gray + a * heatmap."""
    answer = post(client, encode(xray), "?cam=1&image=1").get_json()

    def pixels(b64):
        return cv2.imdecode(np.frombuffer(base64.b64decode(b64), np.uint8), cv2.IMREAD_COLOR).astype(np.float64)

    gray, heat, cam = pixels(answer["image_png"]), pixels(answer["heatmap_png"]), pixels(answer["cam_png"])
    blend = (1 - app_module.CAM_ALPHA) * gray + app_module.CAM_ALPHA * heat
    assert np.abs(blend - cam).max() <= 1.0  # two roundings to uint8


def test_one_pass_cam_equals_the_public_api(synth_root, tmp_path_factory):
    """The app takes probability and map from one gradient pass; they must equal cam_maps and
    model.predict. An untrained 64 px model: the 32 px fixture's maps are 1x1 to 4x4 and all zero."""
    import keras

    import fracture as fr
    from fracture.cam import cam_maps
    from fracture.model import build_model
    from fracture.runs import Run

    keras.utils.set_random_seed(0)  # weights under which neither layer's map is all zero
    cfg = fr.load_config(overrides=dict(weights="none", image_size=64, dense_units=[16, 8, 4]), frozen_random_backbone=True)
    run64 = Run(path=tmp_path_factory.mktemp("random64"), model=build_model(cfg), config=cfg, metrics={})
    predictor = app_module.Predictor(run64)
    gray = cv2.imread(str(sorted(Path(synth_root).glob("train/XR_HUMERUS/*/*_positive/*.png"))[0]), 0)
    x = predictor.prepare(gray)
    heatmaps = {}
    for layer in ("relu", "pool3_relu"):  # the last layer and an inner one (skip paths from the image)
        probability, heatmaps[layer] = predictor.probability_and_cam(x, layer)
        assert probability == pytest.approx(expected_probability(run64, gray), abs=1e-5)
        np.testing.assert_allclose(heatmaps[layer], cam_maps(run64.model, x, [layer])[layer][0], atol=1e-5)
        assert heatmaps[layer].shape == (64, 64) and heatmaps[layer].max() == pytest.approx(1.0)
    assert not np.allclose(heatmaps["relu"], heatmaps["pool3_relu"])


def test_image_flag_returns_the_server_rendering(client, xray):
    answer = post(client, dicom_bytes(xray.astype(np.uint16) * 16), "?image=1", filename="x.dcm").get_json()
    assert png_size(answer["image_png"]) == (xray.shape[1], xray.shape[0])


def test_large_images_come_back_at_display_size(client):
    big = np.random.default_rng(0).integers(0, 255, (1200, 600), dtype=np.uint8)
    answer = post(client, encode(big), "?cam=1&image=1").get_json()
    assert png_size(answer["cam_png"]) == png_size(answer["image_png"]) == (256, 512)


def test_concurrent_requests_give_identical_answers(app, xray):
    data, answers, errors = encode(xray), [], []

    def worker():
        client = app.test_client()
        for _ in range(3):
            response = post(client, data, "?cam=1")
            (answers if response.status_code == 200 else errors).append(response.get_json())

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors and len(answers) == 18
    assert len({a["probability"] for a in answers}) == 1
    assert len({a["cam_png"] for a in answers}) == 1


def test_the_model_is_never_run_by_two_requests_at_once(app, xray, monkeypatch):
    """Predictor._lock: the forward function and the CAM step are replaced by stand-ins that count
    how many calls are inside them at once (a short sleep makes overlaps likely). Without the lock
    this sees 2 or more; checked by replacing the lock with contextlib.nullcontext()."""
    predictor = app.extensions["fracture"]
    inside, most = [0], [0]
    count = threading.Lock()  # guards the counters only

    def enter_and_leave():
        with count:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.02)
        with count:
            inside[0] -= 1

    def forward(x):
        enter_and_leave()
        return np.full((len(x), 1), 0.25, np.float32)

    def maps_and_logits(model, x, layer, method):
        enter_and_leave()
        return np.zeros((len(x), *x.shape[1:3]), np.float32), np.zeros(len(x), np.float32)

    monkeypatch.setattr(predictor, "_forward", forward)
    monkeypatch.setattr("fracture.cam.maps_and_logits", maps_and_logits)
    data, statuses = encode(xray), []

    def worker(query):
        client = app.test_client()
        for _ in range(4):
            statuses.append(post(client, data, query).status_code)

    threads = [threading.Thread(target=worker, args=("?cam=1" if i % 2 else "",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert statuses == [200] * 32
    assert most[0] == 1, f"{most[0]} requests ran the model at the same time"


# --------------------------------------------------------------------------------------------
# bad input: a JSON error with the right status and a reason
# --------------------------------------------------------------------------------------------
def assert_error(response, status: int, *words):
    assert response.status_code == status, response.data[:300]
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["status"] == status and body["error"] and body["message"]
    for word in words:
        assert word in body["message"], body["message"]
    return body


def test_413_over_the_configured_limit(run, xray):
    small = create_app(run, max_upload_mb=0.01, warm_up=False).test_client()  # 10 kB
    assert_error(post(small, np.zeros(20_000, np.uint8).tobytes()), 413, "0.01 MB")
    tiny_png = encode(np.zeros((8, 8), np.uint8))
    assert post(small, tiny_png).status_code == 200  # under the limit still works


def test_limits_come_from_the_environment(run, monkeypatch):
    monkeypatch.setenv("FRACTURE_MAX_UPLOAD_MB", "3")
    monkeypatch.setenv("FRACTURE_MAX_PIXELS", "1000")
    configured = create_app(run, warm_up=False)
    assert configured.config["MAX_CONTENT_LENGTH"] == 3 * 1024 * 1024
    assert configured.config["MAX_PIXELS"] == 1000


@pytest.mark.parametrize("name, data, reason", [
    ("text", b"hello, this is a text file, not an X-ray\n" * 10, "not a readable image"),
    ("garbage", np.random.default_rng(1).integers(0, 255, 5000, dtype=np.uint8).tobytes(), "not a readable image"),
    ("png-signature-only", b"\x89PNG\r\n\x1a\n", "not a readable image"),
])
def test_400_not_an_image(client, name, data, reason):
    assert_error(post(client, data, filename=f"{name}.png"), 400, reason)


def test_400_truncated_or_multiframe(client, xray, monkeypatch):
    png = encode(xray)
    assert_error(post(client, png[: len(png) // 2]), 400, "truncated PNG")
    dicom = dicom_bytes(xray.astype(np.uint16))
    assert_error(post(client, dicom[:-1000], filename="x.dcm"), 400, "DICOM")
    frames = dicom_bytes(np.zeros((2, 8, 8), np.uint16), rows=8, columns=8, frames=2)
    assert post(client, frames, filename="x.dcm").status_code in (200, 400)  # never a 500

    def crash(data):
        raise cv2.error("OpenCV(5.0.0) Bad number of channels")

    monkeypatch.setattr("fracture.imageio._opencv_decode", crash)  # any decoder crash on upload bytes -> 400
    assert_error(post(client, encode(xray)), 400, "cannot decode the image", "Bad number of channels")


@pytest.mark.parametrize("width, height", [(7_000, 7_000), (100_000, 100_000)])  # ours, then Pillow's limit
def test_400_decompression_bomb_png(client, width, height):
    assert_error(post(client, png_claiming(width, height)), 400, "too many pixels")


def test_400_decompression_bomb_dicom(client):
    lying = dicom_bytes(np.zeros((2, 2), np.uint16), rows=60_000, columns=60_000)
    assert_error(post(client, lying, filename="x.dcm"), 400, "too many pixels", "60000x60000")


def test_400_over_a_small_pixel_limit(client, app, xray, monkeypatch):
    monkeypatch.setitem(app.config, "MAX_PIXELS", 1000)
    assert_error(post(client, encode(xray)), 400, "too many pixels", "1,000")


def test_400_empty_missing_and_bad_layer(client, xray):
    assert_error(post(client, b""), 400, "empty")
    assert_error(post(client, encode(xray), field="image"), 400, "'file'")
    assert_error(client.post("/api/predict"), 400, "'file'")
    body = assert_error(post(client, encode(xray), "?cam=1&layer=../../etc/passwd"), 400, "unknown CAM layer")
    assert "relu" in body["message"]


def test_405_404_and_500_are_json(client, app, xray, monkeypatch):
    assert_error(client.get("/api/predict"), 405, "GET")
    assert_error(client.post("/healthz"), 405)
    assert_error(client.get("/no/such/page"), 404)

    def boom(x):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(app.extensions["fracture"], "probability", boom)
    body = assert_error(post(client, encode(xray)), 500)
    assert "secret" not in body["message"]


# --------------------------------------------------------------------------------------------
# uploads never touch the disk
# --------------------------------------------------------------------------------------------
@pytest.fixture
def file_opens(monkeypatch):
    """Every file opened through builtins.open/os.open (tempfile uses os.open): (path, writing)."""
    seen = []
    real_open, real_os_open = builtins.open, os.open
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | getattr(os, "O_TMPFILE", 0)

    def spy_open(file, mode="r", *args, **kwargs):
        seen.append((str(file), any(c in mode for c in "wax+")))
        return real_open(file, mode, *args, **kwargs)

    def spy_os_open(path, flags, *args, **kwargs):
        seen.append((str(path), bool(flags & write_flags)))
        return real_os_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(os, "open", spy_os_open)
    return seen


def post_encoded(client, data: bytes, query="", filename="xray.png"):
    """Like post(), but the multipart body is built in memory first: the test client itself
    spools bodies over 500 kB to a temporary file, which would hide what the app does."""
    boundary = "fracture-test-boundary"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return client.post("/api/predict" + query, data=body,
                       content_type=f"multipart/form-data; boundary={boundary}")


def test_uploads_stay_in_memory_and_names_are_ignored(client, file_opens):
    big = encode(np.random.default_rng(2).integers(0, 255, (900, 900), dtype=np.uint8))
    assert len(big) > 600 * 1024  # Werkzeug would spool this to a temporary file by default
    response = post_encoded(client, big, "?cam=1", filename="../../../../tmp/evil.png")
    assert response.status_code == 200, response.get_json()
    assert not [path for path, writing in file_opens if writing], f"files written: {file_opens}"
    assert not [path for path, _ in file_opens if "evil" in path]


def test_the_disk_spy_catches_werkzeugs_default_spooling(file_opens):
    """Control for the test above: a plain Flask app does write the same upload to a temp file."""
    plain = flask.Flask("plain")
    plain.post("/api/predict")(lambda: str(len(flask.request.files["file"].read())))
    big = os.urandom(700 * 1024)
    assert post_encoded(plain.test_client(), big).data == str(len(big)).encode()
    assert [path for path, writing in file_opens if writing]


# --------------------------------------------------------------------------------------------
# start-up: which run, and the lazily created module-level app
# --------------------------------------------------------------------------------------------
def test_lazy_module_app_uses_the_newest_run(trained_run, monkeypatch, caplog):
    assert "app" not in vars(app_module)  # nothing is loaded at import time
    monkeypatch.delenv("FRACTURE_RUN", raising=False)
    monkeypatch.setenv("FRACTURE_RUNS_DIR", str(Path(trained_run).parent))
    monkeypatch.setattr(app_module, "_app", None)
    monkeypatch.setattr(app_module.Predictor, "warm_up", lambda self: 0.0)  # tested with the fixture app
    caplog.set_level("INFO", logger="fracture.app")
    lazy = app_module.app
    assert isinstance(lazy, flask.Flask) and app_module.app is lazy
    assert lazy.extensions["fracture"].run.name == "tiny"
    assert "newest in" in caplog.text and "tiny" in caplog.text


def test_missing_run_is_a_clear_error(tmp_path, monkeypatch):
    from fracture.errors import FractureError

    monkeypatch.delenv("FRACTURE_RUN", raising=False)
    with pytest.raises(FractureError, match="no trained run"):
        create_app(runs_dir=str(tmp_path))


@pytest.mark.backend
def test_the_app_answers_like_model_predict_on_this_backend(tmp_path):
    """The app's forward path (tf.function on TensorFlow, predict_on_batch elsewhere) and its one-pass
    CAM on the backend in use, against model.predict in the same process. An untrained 32 px VGG16:
    the app's code does not depend on the backbone, and VGG16 compiles in seconds on JAX where
    DenseNet121's CAM gradient took ~40 s (`make test` runs this on JAX and PyTorch too)."""
    import keras

    import fracture as fr
    from fracture.model import build_model
    from fracture.runs import Run

    keras.utils.set_random_seed(0)
    cfg = fr.load_config(overrides=dict(backbone="VGG16", weights="none", image_size=32, dense_units=[16, 8, 4]),
                         frozen_random_backbone=True)
    run = Run(path=tmp_path / "untrained", model=build_model(cfg), config=cfg, metrics={})
    client = create_app(run, warm_up=False).test_client()
    gray = np.random.default_rng(5).integers(0, 256, (48, 40), dtype=np.uint8)
    gray[0, 0], gray[0, 1] = 0, 255  # full range: the decoder's stretch leaves the pixels as they are
    expected = expected_probability(run, gray)
    plain = post(client, encode(gray))
    with_cam = post(client, encode(gray), "?cam=1")
    assert plain.status_code == with_cam.status_code == 200, (plain.get_json(), with_cam.get_json())
    assert plain.get_json()["probability"] == pytest.approx(expected, abs=1e-5)
    assert with_cam.get_json()["probability"] == pytest.approx(expected, abs=1e-5)
    assert png_size(with_cam.get_json()["cam_png"]) == (40, 48)


# --------------------------------------------------------------------------------------------
# the study upload, the uncertain wording and the port
# --------------------------------------------------------------------------------------------
def post_study(client, files, query=""):
    """files: [(bytes, name)] in the repeated field 'files'."""
    return client.post("/api/study" + query, data={"files": [(io.BytesIO(d), n) for d, n in files]},
                       content_type="multipart/form-data")


@pytest.fixture(scope="module")
def study_images(synth_root):
    """Three views, normalised like `xray` so the decoder's stretch leaves them unchanged."""
    paths = sorted(Path(synth_root).glob("train/XR_HUMERUS/*/*/*.png"))[:3]
    return [cv2.normalize(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE), None, 0, 255, cv2.NORM_MINMAX) for p in paths]


def test_study_mean_equals_numpy_mean_of_the_model(client, run, study_images):
    response = post_study(client, [(encode(g), f"view{i}.png") for i, g in enumerate(study_images)], "?cam=1&image=1")
    assert response.status_code == 200, response.get_json()
    answer = response.get_json()
    direct = [expected_probability(run, gray) for gray in study_images]  # model.predict, one by one
    assert [image["name"] for image in answer["images"]] == ["view0.png", "view1.png", "view2.png"]
    for image, expected, gray in zip(answer["images"], direct, study_images):
        assert image["probability"] == pytest.approx(expected, abs=1e-5)
        assert image["image"] == {"width": gray.shape[1], "height": gray.shape[0]}
        assert {"cam_png", "heatmap_png", "image_png"} <= set(image)
    study = answer["study"]
    assert study["probability"] == pytest.approx(float(np.mean(direct)), abs=1e-5)
    assert study["images"] == 3 and study["failed"] == 0
    assert study["label"] == ("abnormal" if study["probability"] > run.config.threshold else "normal")
    assert answer["layer"] == "relu" and answer["threshold"] == run.config.threshold


def test_study_reports_an_unreadable_file_without_failing_the_others(client, run, study_images):
    files = [(encode(study_images[0]), "good.png"), (b"not an image at all" * 20, "notes.png"),
             (encode(study_images[1]), "good2.png")]
    answer = post_study(client, files).get_json()
    bad = answer["images"][1]
    assert bad["name"] == "notes.png" and "not a readable image" in bad["message"] and "probability" not in bad
    direct = [expected_probability(run, g) for g in study_images[:2]]
    assert answer["study"]["probability"] == pytest.approx(float(np.mean(direct)), abs=1e-5)
    assert answer["study"]["images"] == 2 and answer["study"]["failed"] == 1


def test_study_errors_and_limits(run, client, study_images):
    body = assert_error(post_study(client, [(b"garbage" * 50, "a.png"), (b"", "b.png")]), 400,
                        "none of the 2 files", "a.png: not a readable image", "b.png: empty")
    assert [image["name"] for image in body["images"]] == ["a.png", "b.png"]
    assert_error(post_study(client, [(b"junk" * 50, "only.png")]), 400, "not a readable image")
    assert_error(client.post("/api/study", data={}, content_type="multipart/form-data"), 400, "'files'")
    small = create_app(run, warm_up=False, max_study_images=2).test_client()
    three = [(encode(g), f"{i}.png") for i, g in enumerate(study_images)]
    assert_error(post_study(small, three), 400, "3 files", "at most 2 images")
    assert post_study(small, three[:2]).status_code == 200
    assert_error(post_study(client, three, "?cam=1&layer=conv1"), 400, "unknown CAM layer")
    # one file in the field 'file' (as /api/predict takes it) is a study of one
    one = client.post("/api/study", data={"file": (io.BytesIO(three[0][0]), "x.png")},
                      content_type="multipart/form-data").get_json()
    assert one["study"]["probability"] == one["images"][0]["probability"]


def test_study_limits_come_from_the_environment(run, monkeypatch):
    monkeypatch.setenv("FRACTURE_MAX_STUDY_IMAGES", "5")
    assert create_app(run, warm_up=False).config["MAX_STUDY_IMAGES"] == 5


@pytest.mark.parametrize("p, words", [
    (0.497, ("normal", True, "uncertain, leans normal")),
    (0.52, ("abnormal", True, "uncertain, leans abnormal")),
    (0.10, ("normal", False, "normal")),
    (0.90, ("abnormal", False, "abnormal")),
])
def test_near_threshold_answers_are_worded_uncertain(app, client, xray, monkeypatch, p, words):
    """A 49.7 % must not come back as a plain "normal": the model's output is replaced by p."""
    monkeypatch.setattr(app.extensions["fracture"], "_forward", lambda x: np.full((len(x), 1), p, np.float32))
    answer = post(client, encode(xray)).get_json()
    assert (answer["label"], answer["uncertain"], answer["verdict"]) == words
    study = post_study(client, [(encode(xray), "a.png"), (encode(xray), "b.png")]).get_json()["study"]
    assert (study["label"], study["uncertain"], study["verdict"]) == words


def test_serve_defaults_to_port_8000_not_mlflows_5000():
    from fracture.cli import build_parser

    args = build_parser().parse_args(["serve"])
    assert args.port == 8000 and args.host == "127.0.0.1"
