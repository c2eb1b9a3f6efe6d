"""Exports of the tiny run, each loaded by its own runtime and compared with model.keras; the ONNX
paths of `predict` and `serve` in fresh interpreters that must not import Keras or TensorFlow."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import fracture as fr
from fracture import export

pytestmark = pytest.mark.slow  # three exports of a DenseNet121 (tf2onnx alone takes ~20 s)

HEAVY = ("keras", "tensorflow", "jax", "torch")


@pytest.fixture(scope="module")
def run_copy(trained_run, tmp_path_factory):
    """A copy of the tiny run (exports write into the run folder), and raw pixels of its test
    images with model.keras's probabilities for them, from a fresh load of model.keras."""
    import keras

    run_dir = tmp_path_factory.mktemp("export") / trained_run.name
    shutil.copytree(trained_run, run_dir)
    paths = pd.read_csv(run_dir / "predictions_test.csv")["path"].head(6).tolist()
    images, ok, _ = fr.load_images(paths, 32)
    assert ok.all() and images.dtype == np.uint8
    expected = keras.saving.load_model(run_dir / "model.keras").predict(images.astype(np.float32), verbose=0)
    return fr.load_run(run_dir), np.asarray(images), expected.reshape(-1), paths


@pytest.fixture(scope="module")
def exported(run_copy):
    run = run_copy[0]
    return {fmt: export.export_run(run, fmt) for fmt in export.FORMATS}


def test_onnx_runs_on_onnxruntime_like_keras(exported, run_copy):
    import onnxruntime

    _, images, expected, _ = run_copy
    assert exported["onnx"] == run_copy[0].path / "export" / "onnx" / "model.onnx"
    session = onnxruntime.InferenceSession(str(exported["onnx"]), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: images.astype(np.float32)})
    np.testing.assert_allclose(out.reshape(-1), expected, atol=1e-4)
    meta = session.get_modelmeta().custom_metadata_map
    assert float(meta["threshold"]) == run_copy[0].threshold and meta["image_size"] == "32"


def test_saved_model_loads_with_tensorflow_like_keras_for_float_and_uint8(exported, run_copy):
    import tensorflow as tf

    _, images, expected, _ = run_copy
    loaded = tf.saved_model.load(str(exported["tf_saved_model"]))
    assert {"serving_default", "serve_uint8"} <= set(loaded.signatures)
    from_float = np.asarray(loaded.signatures["serving_default"](image=tf.constant(images, tf.float32))["output_0"])
    from_uint8 = np.asarray(loaded.signatures["serve_uint8"](image=tf.constant(images, tf.uint8))["output_0"])
    np.testing.assert_allclose(from_float.reshape(-1), expected, atol=1e-4)
    np.testing.assert_array_equal(from_uint8, from_float)


def test_litert_runs_on_the_litert_interpreter_like_keras(exported, run_copy):
    interpreter_module = pytest.importorskip("ai_edge_litert.interpreter", reason="ai-edge-litert not installed")
    _, images, expected, _ = run_copy
    interpreter = interpreter_module.Interpreter(model_path=str(exported["litert"]))
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.resize_tensor_input(inp["index"], images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], images.astype(np.float32))
    interpreter.invoke()
    np.testing.assert_allclose(interpreter.get_tensor(out["index"]).reshape(-1), expected, atol=1e-4)


def test_onnx_model_takes_uint8_and_float_alike(exported, run_copy):
    from fracture.onnx_serving import OnnxModel

    _, images, expected, _ = run_copy
    model = OnnxModel(exported["onnx"])
    from_uint8, from_float = model.predict(images), model.predict(images.astype(np.float64))
    np.testing.assert_array_equal(from_uint8, from_float)
    np.testing.assert_allclose(from_uint8, expected, atol=1e-4)


def test_unknown_format_and_a_non_onnx_model_are_user_errors(run_copy, capsys):
    from fracture.cli import main

    assert main(["predict", "--model", str(run_copy[0].path / "model.keras"), *run_copy[3][:1]]) == 2
    assert "exported .onnx" in capsys.readouterr().err
    with pytest.raises(export.ExportError, match="unknown format"):
        export.export_run(run_copy[0], "coreml")


PREDICT_WITHOUT_KERAS = """
import json, sys
from fracture.cli import main
code = main(["predict", "--model", sys.argv[1], *sys.argv[2:]])
print(json.dumps({"code": code, "heavy": sorted({m.split(".")[0] for m in sys.modules} & set(%r))}))
""" % (HEAVY,)

SERVE_WITHOUT_KERAS = """
import json, sys
import flask
answers = {}
def run_instead(app, **kwargs):  # `serve` would block in app.run: ask the app through Flask's test client
    client = app.test_client()
    answers["model"] = client.get("/api/model").get_json()
    with open(sys.argv[2], "rb") as image:
        answers["predict"] = client.post("/api/predict", data={"file": (image, "x.png")}).get_json()
    answers["cam"] = client.post("/api/predict?cam=1", data={"file": (open(sys.argv[2], "rb"), "x.png")}).status_code
flask.Flask.run = run_instead
from fracture.cli import main
answers["code"] = main(["serve", "--dev", "--model", sys.argv[1]])  # --dev: Flask.run (gunicorn otherwise)
answers["heavy"] = sorted({m.split(".")[0] for m in sys.modules} & set(%r))
print(json.dumps(answers))
""" % (HEAVY,)


def fresh(script, *args):
    done = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_predict_with_an_onnx_model_imports_no_keras_or_tensorflow(exported, run_copy):
    _, _, expected, paths = run_copy
    lines = fresh(PREDICT_WITHOUT_KERAS, exported["onnx"], *paths).strip().splitlines()
    result = json.loads(lines[-1])
    assert result == {"code": 0, "heavy": []}
    table = [line.split() for line in lines[1:-1]]  # path probability label
    assert [row[0] for row in table] == paths
    np.testing.assert_allclose([float(row[1]) for row in table], expected, atol=1e-4)


def test_serve_with_an_onnx_model_imports_no_keras_or_tensorflow(exported, run_copy):
    _, _, expected, paths = run_copy
    result = json.loads(fresh(SERVE_WITHOUT_KERAS, exported["onnx"], paths[0]).strip().splitlines()[-1])
    assert result["code"] == 0 and result["heavy"] == []
    assert result["model"]["cam_layers"] == [] and "Keras" in result["model"]["cam_note"]
    assert result["predict"]["probability"] == pytest.approx(expected[0], abs=1e-4)
    assert result["cam"] == 400  # CAM needs the Keras model, and the answer says so
