"""MLflow tracking against real stores, no mocks: a temporary SQLite store, a real `mlflow server`
on a free 127.0.0.1 port, and an unreachable one. Three tiny trainings (VGG16, 32 px) in all;
every assertion about the SQLite store reads back the one module-scoped run."""

import contextlib
import json
import logging
import math
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

import fracture as fr
from fracture import config, machine, tracking
from fracture.cli import main
from fracture.errors import FractureError
from fracture.testing import free_port, stop_server, wait_until_healthy
from tests.conftest import tiny_config

pytestmark = pytest.mark.slow

EPOCH_METRICS = ["loss", "auc", "accuracy", "val_loss", "val_auc", "val_accuracy", "learning_rate"]
RUN_ARTIFACTS = ["config.yaml", "model_summary.txt", "history.csv", "metrics.json", "skipped.csv",
                 "predictions_val.csv", "predictions_test.csv", "plots/curves.png", "plots/val/roc.png",
                 "plots/val/confusion_matrix.png", "plots/test/roc.png"]
MODEL_ARTIFACTS = ["MLmodel", "data/model.keras", "input_example.json", "serving_input_example.json"]
RUN_FILES = ["model.keras", "config.yaml", "model_summary.txt", "history.csv", "metrics.json", "skipped.csv",
             "predictions_val.csv", "plots/curves.png", "plots/val/roc.png", "plots/val/confusion_matrix.png"]
COUNT_TAGS = ["epochs_run", "trainable_params", "frozen_params", "skipped_files", "train_images", "val_images",
              "test_images", "class_weight_0", "class_weight_1"]


def artifact_paths(client, run_id, path=None, lister="list_artifacts") -> set[str]:
    """Every file under a run's artifacts (or, with lister="list_logged_model_artifacts", a LoggedModel's)."""
    out = set()
    for item in getattr(client, lister)(run_id, path):
        out |= artifact_paths(client, run_id, item.path, lister) if item.is_dir else {item.path}
    return out


def check_run_matches_folder(client, run_dir: Path, epochs: int) -> str:
    """The assertions every tracked run must pass, whatever the store. Returns the run id."""
    run_id, uri = (run_dir / tracking.RUN_ID_FILE).read_text().split("\n")[:2]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == run_dir.name
    cfg = config.load(run_dir / "config.yaml")
    assert run.data.params == {k: str(v) for k, v in cfg.to_dict().items()}
    history = pd.read_csv(run_dir / "history.csv")
    for key in EPOCH_METRICS:
        points = client.get_metric_history(run_id, key)
        assert [p.step for p in points] == list(range(epochs)), key
        np.testing.assert_allclose([p.value for p in points], history[key], rtol=1e-5, err_msg=key)
    stored = json.loads((run_dir / "metrics.json").read_text())
    for split in ("val", "test"):  # val logged by train, test by the final `evaluate --split test`
        for level in ("image", "study"):
            for key in ("auc", "kappa", "accuracy", "sensitivity", "specificity"):
                logged, expected = run.data.metrics[f"{split}_{level}_{key}"], stored[split][level][key]
                assert logged == pytest.approx(expected) or (math.isnan(logged) and math.isnan(expected))
                if stored[split][level].get(f"{key}_ci"):
                    assert [run.data.metrics[f"{split}_{level}_{key}_ci_{end}"] for end in ("low", "high")] == \
                        pytest.approx(stored[split][level][f"{key}_ci"])
    tags = run.data.tags
    assert tags["run_dir"] == str(run_dir.resolve()) and tags["backbone"] == "VGG16"
    assert tags["keras_backend"] == keras.backend.backend() and tags["fracture_version"] == fr.__version__
    assert tags["study_type"] == "XR_HUMERUS" and tags["git_commit"]
    # The machine record of metrics.json, as flat tags.
    assert {k: v for k, v in tags.items() if k.startswith("machine.")} == machine.as_tags(stored["machine"])
    assert tags["dataset_fingerprint"] == tracking.dataset_fingerprint(fr.load_index(cfg))
    assert set(RUN_ARTIFACTS) <= artifact_paths(client, run_id)
    # The model is a LoggedModel of this run (MLflow 3), not a folder of run artifacts.
    (output,) = run.outputs.model_outputs
    model = client.get_logged_model(output.model_id)
    assert model.name == "model" and model.source_run_id == run_id and model.status == "READY"
    assert set(MODEL_ARTIFACTS) <= artifact_paths(client, model.model_id, lister="list_logged_model_artifacts")
    # Counts are facts (tags), not metrics; the run folder's numbers.
    assert not set(COUNT_TAGS) & set(run.data.metrics)
    assert {k: tags[k] for k in COUNT_TAGS} == {
        "epochs_run": str(stored["epochs_run"]), "trainable_params": str(stored["trainable_params"]),
        "frozen_params": str(stored["frozen_params"]), "skipped_files": str(stored["skipped_files"]),
        **{f"{split}_images": str(n) for split, n in stored["counts"].items()},
        **{f"class_weight_{k}": str(w) for k, w in stored["class_weights"].items()}}
    # The image index is the run's training dataset, its digest the fingerprint.
    (dataset,) = run.inputs.dataset_inputs
    assert dataset.dataset.digest == tags["dataset_fingerprint"]
    assert {t.key: t.value for t in dataset.tags} == {"mlflow.data.context": "training"}
    assert json.loads(dataset.dataset.profile)["num_rows"] == len(fr.load_index(cfg))
    return run_id


def tracked_config(tmp, data_dir, **overrides):
    """A tiny run with MLflow on. VGG16, not DenseNet121: what is tested here is the tracking, and
    TensorFlow traces VGG16's 19 layers in a fraction of the time DenseNet121's 400+ take."""
    return tiny_config(tmp, data_dir, mlflow=True, backbone="VGG16", **overrides)


# --------------------------------------------------------------------------------------------
# a temporary local store (SQLite, as the repo default)
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def local_run(train_data, tmp_path_factory):
    """One tiny 2-epoch run tracked in a temporary SQLite store (via MLFLOW_TRACKING_URI)."""
    tmp = tmp_path_factory.mktemp("mlflow_local")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        run_dir = fr.train(tracked_config(tmp, train_data, epochs=2, run_name="tracked"))
    fr.evaluate(run_dir, split="test")  # the final test report, logged into the same MLflow run
    client = MlflowClient(uri)
    return SimpleNamespace(run_dir=run_dir, uri=uri, client=client, tmp=tmp,
                           run_id=check_run_matches_folder(client, run_dir, epochs=2))


def test_local_store_holds_params_epoch_metrics_final_metrics_tags_and_artifacts(local_run):
    assert (local_run.run_dir / tracking.RUN_ID_FILE).read_text() == \
        f"{local_run.run_id}\n{local_run.uri}\n{local_run.run_dir.resolve()}\n"  # line 3: where it was recorded
    run = local_run.client.get_run(local_run.run_id)
    assert run.data.tags["skipped_files"] == "1" and int(run.data.tags["train_images"]) > 0
    assert "trainable_params" not in run.data.metrics and "frozen_params" not in run.data.metrics
    summary = (local_run.run_dir / "model_summary.txt").read_text()
    assert 'Model: "fracture_VGG16"' in summary and "block5_conv3 (Conv2D)" in summary
    trainable, frozen = fr.count_params(fr.load_run(local_run.run_dir).model)
    assert f"Trainable params: {trainable:,}" in summary and f"Non-trainable params: {frozen:,}" in summary
    # Artifacts land beside the database, not in ./mlruns of whatever folder pytest runs in.
    assert run.info.artifact_uri.startswith((local_run.tmp / "mlruns").as_uri())


def test_logged_model_loads_with_mlflow_and_predicts_like_the_run(local_run, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", local_run.uri)  # runs:/ URIs resolve in the current store
    stored = pd.read_csv(local_run.run_dir / "predictions_test.csv").head(4)
    images, ok, _ = fr.load_images(stored["path"], 32)
    assert ok.all()
    model = mlflow.pyfunc.load_model(f"runs:/{local_run.run_id}/model")
    assert model.metadata.get_input_schema() is None  # MLflow would refuse every dtype but the declared one
    assert model.metadata.metadata["input_shape"] == [-1, 32, 32, 1]
    assert images.dtype == np.uint8  # what a PNG gives: accepted as it is, and like its float32 copy
    from_uint8 = np.asarray(model.predict(images)).ravel()
    np.testing.assert_array_equal(from_uint8, np.asarray(model.predict(images.astype(np.float32))).ravel())
    np.testing.assert_allclose(from_uint8, stored["probability"], atol=1e-5)


# What a user without this package runs: plain Keras and plain MLflow, in a fresh interpreter.
FRESH_LOAD = """
import json, sys
import keras, mlflow, numpy as np
images = np.load(sys.argv[1])
from_keras = keras.saving.load_model(sys.argv[2]).predict(images, verbose=0)
from_pyfunc = mlflow.pyfunc.load_model(sys.argv[3]).predict(images)
from_logged_model = mlflow.pyfunc.load_model(sys.argv[4]).predict(images)
imported = sorted(name for name in sys.modules if name.split(".")[0] == "fracture")
print(json.dumps({"keras": np.ravel(from_keras).tolist(), "pyfunc": np.ravel(from_pyfunc).tolist(),
                  "logged_model": np.ravel(from_logged_model).tolist(), "imported": imported}))
"""


def outside_env(uri: str) -> dict:
    """This interpreter's environment with the test's store, without this checkout on PYTHONPATH, and
    with the venv's bin first on PATH (`mlflow models serve` runs `uvicorn` found on PATH)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["MLFLOW_TRACKING_URI"] = uri
    return env


def stored_predictions(run_dir: Path, n: int):
    """The run's first `n` test images as raw pixels, and the probabilities training stored for them."""
    stored = pd.read_csv(run_dir / "predictions_test.csv").head(n)
    images, ok, _ = fr.load_images(stored["path"], 32)
    assert ok.all()
    return images.astype(np.float32), stored["probability"].to_numpy()


def test_saved_models_load_with_plain_keras_and_mlflow_in_a_fresh_process(local_run, tmp_path):
    images, expected = stored_predictions(local_run.run_dir, 4)
    np.save(tmp_path / "images.npy", images)
    done = subprocess.run([sys.executable, "-c", FRESH_LOAD, str(tmp_path / "images.npy"),
                           str(local_run.run_dir / "model.keras"), f"runs:/{local_run.run_id}/model",
                           f"models:/{logged_model_id(local_run)}"],
                          cwd=tmp_path, env=outside_env(local_run.uri), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["imported"] == []  # neither load needed (or imported) this package
    np.testing.assert_allclose(result["keras"], expected, atol=1e-5)
    np.testing.assert_allclose(result["pyfunc"], expected, atol=1e-5)
    np.testing.assert_allclose(result["logged_model"], result["keras"], atol=1e-6)


def logged_model_id(local_run) -> str:
    (output,) = local_run.client.get_run(local_run.run_id).outputs.model_outputs
    return output.model_id


def test_the_logged_model_is_found_and_registers(local_run, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", local_run.uri)  # the fluent API reads the test's store
    experiment = local_run.client.get_run(local_run.run_id).info.experiment_id
    found = mlflow.search_logged_models(experiment_ids=[experiment], output_format="list",
                                        filter_string=f"source_run_id = '{local_run.run_id}'")
    assert [m.model_id for m in found] == [logged_model_id(local_run)] and found[0].name == "model"
    # The Models tab shows the run's final scores on the model itself.
    stored = json.loads((local_run.run_dir / "metrics.json").read_text())
    linked = {m.key: m.value for m in found[0].metrics}
    assert linked["test_study_auc"] == pytest.approx(stored["test"]["study"]["auc"], nan_ok=True)
    version = mlflow.register_model(f"models:/{found[0].model_id}", "fracture-test")
    stored_version = local_run.client.get_model_version("fracture-test", str(version.version))
    assert int(version.version) == 1 and stored_version.run_id == local_run.run_id
    assert stored_version.source == f"models:/{found[0].model_id}"


@contextlib.contextmanager
def mlflow_process(args, port_flag, log_path, health, env, cwd=None):
    """`mlflow <args> <port_flag> <free port>` on 127.0.0.1, started in its own process group; yields
    its URL once `health` answers, and stops it with its workers afterwards."""
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    command = [str(mlflow_bin)] if mlflow_bin.exists() else [sys.executable, "-m", "mlflow"]
    for attempt in range(3):
        # The free port is only free when chosen: another process may take it during the tens of
        # seconds mlflow takes to start. Only that failure is retried, on a new port.
        port = free_port()
        with open(log_path, "wb") as log:
            server = subprocess.Popen([*command, *args, port_flag, str(port)], cwd=cwd, env=env, stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            try:
                wait_until_healthy(server, url, 180, log_path, health=health)
            except FractureError as exc:
                if "address already in use" in str(exc).lower() and attempt < 2:
                    continue
                pytest.fail(f"mlflow {args[0]} did not come up: {exc}")
            yield url
            return
        finally:
            stop_server(server, group=True)  # the mlflow CLI and its uvicorn worker


def test_logged_model_serves_with_mlflow_models_serve(local_run, tmp_path):
    images, expected = stored_predictions(local_run.run_dir, 1)
    serve = ["models", "serve", "-m", f"runs:/{local_run.run_id}/model", "--env-manager", "local", "-h", "127.0.0.1"]
    with mlflow_process(serve, "-p", tmp_path / "serve.log", "/ping", env=outside_env(local_run.uri),
                        cwd=tmp_path) as url:
        answers = []
        for pixels in (images.astype(np.uint8).tolist(), images.tolist()):  # JSON ints (PNG pixels), floats
            request = urllib.request.Request(f"{url}/invocations", json.dumps({"inputs": pixels}).encode(),
                                             {"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=60) as answer:
                answers.append(json.loads(answer.read())["predictions"])
    assert np.shape(answers[0]) == np.shape(answers[1]) == (1, 1)
    np.testing.assert_array_equal(answers[0], answers[1])
    np.testing.assert_allclose(np.ravel(answers[0]), expected, atol=1e-5)


def test_report_is_logged_to_the_run(local_run):
    from fracture import report
    from fracture.cli import main

    assert main(["report", "--run", str(local_run.run_dir), "--failures", "1"]) == 0
    assert "report.html" in artifact_paths(local_run.client, local_run.run_id)
    assert report.REPORT_FILE == "report.html" and (local_run.run_dir / "report.html").is_file()


def test_runs_cli_prints_the_best_runs_from_the_store(local_run, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", local_run.uri)
    assert main(["runs", "--sort", "val_study_auc", "--limit", "3"]) == 0
    out = capsys.readouterr().out
    assert "tracked" in out and "val_study_auc" in out and "VGG16" in out and local_run.run_id[:8] in out

    assert main(["runs", "--sort", "no_such_metric"]) == 2
    assert "no run in experiment 'fracture' has the metric 'no_such_metric'" in capsys.readouterr().err
    assert main(["runs", "--experiment", "nope"]) == 2
    assert "no MLflow experiment 'nope'" in capsys.readouterr().err


def test_runs_cli_without_a_local_store_says_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["runs"]) == 2
    assert "no MLflow store here" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()


def test_log_artifacts_adds_later_files_to_the_recorded_run(local_run, tmp_path):
    panel = tmp_path / "panel.png"
    panel.write_bytes(b"png")
    folder = tmp_path / "image1"
    folder.mkdir()
    (folder / "gradcam.png").write_bytes(b"png")
    assert tracking.log_artifacts(local_run.run_dir, [panel, folder], "cam")
    assert {"cam/panel.png", "cam/image1/gradcam.png"} <= artifact_paths(local_run.client, local_run.run_id, "cam")
    assert not tracking.log_artifacts(tmp_path, [panel], "cam")  # an untracked folder: nothing to do


def test_a_resumed_run_folder_reopens_its_mlflow_run(local_run, train_data, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", local_run.uri)
    cfg = config.load(local_run.run_dir / "config.yaml")
    tracker = tracking.start(cfg, local_run.run_dir)
    try:
        assert tracker.run_id == local_run.run_id
        assert local_run.client.get_run(local_run.run_id).info.status == "RUNNING"
    finally:
        local_run.client.set_terminated(local_run.run_id, "FINISHED")


def test_a_run_that_raises_ends_failed_with_the_error(train_data, tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    # A config mistake fails before any run exists (tests/test_preflight.py); this is a failure after
    # the MLflow run started: decoding dies (say, the disk holding the cache filled up).
    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("fracture.data.split_arrays", disk_full)
    with pytest.raises(OSError, match="No space left"):
        fr.train(tiny_config(tmp_path, train_data, mlflow=True, backbone="VGG16", run_name="broken"))
    run_id = (tmp_path / "runs" / "broken" / tracking.RUN_ID_FILE).read_text().split()[0]
    run = MlflowClient(uri).get_run(run_id)
    assert run.info.status == "FAILED" and "No space left on device" in run.data.tags["error"]


# --------------------------------------------------------------------------------------------
# a real tracking server
# --------------------------------------------------------------------------------------------
@pytest.fixture
def mlflow_server(tmp_path):
    """`mlflow server` on a free 127.0.0.1 port (SQLite backend, proxied artifacts); stopped after."""
    server = ["server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
              "--artifacts-destination", str(tmp_path / "server_artifacts"), "--host", "127.0.0.1", "--workers", "1"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    with mlflow_process(server, "--port", tmp_path / "server.log", "/health", env=env) as url:
        yield url


def test_training_against_a_real_mlflow_server(mlflow_server, train_data, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    run_dir = fr.train(tracked_config(tmp_path, train_data, run_name="served"))
    fr.evaluate(run_dir, split="test")
    run_id = check_run_matches_folder(MlflowClient(mlflow_server), run_dir, epochs=1)
    assert (run_dir / tracking.RUN_ID_FILE).read_text() == f"{run_id}\n{mlflow_server}\n{run_dir.resolve()}\n"
    assert list((tmp_path / "server_artifacts").rglob("model.keras"))  # uploaded through the server


# --------------------------------------------------------------------------------------------
# no store at all
# --------------------------------------------------------------------------------------------
def test_unreachable_server_warns_fast_and_the_run_folder_is_complete(train_data, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    for key in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(key, raising=False)
    cfg = tracked_config(tmp_path, train_data, run_name="offline")

    started = time.perf_counter()
    assert tracking.start(cfg, tmp_path / "probe") is None
    assert time.perf_counter() - started < 20  # seconds, not MLflow's default minutes of retries
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ  # the fast-fail limits were scoped

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fracture.tracking"):
        run_dir = fr.train(cfg)
    warnings = [r for r in caplog.records if r.name == "fracture.tracking"]
    assert len(warnings) == 1 and "MLflow tracking is off for this run" in warnings[0].getMessage()
    for name in RUN_FILES:
        assert (run_dir / name).is_file(), name
    assert not (run_dir / tracking.RUN_ID_FILE).exists()
