"""Distributed training on CPU: two TensorFlow workers on 127.0.0.1, and JAX over two host devices.

Each run is a subprocess (a multi-worker strategy and XLA's device count are fixed at process
start). The references are independent: the other worker's own weights, and a one-device run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fracture.testing import free_port

WORKER = Path(__file__).with_name("distributed_worker.py")
# VGG16: 19 backbone layers compile in seconds, where DenseNet121's 427 took ~4 min per process on
# 2 cores. The backbone is not what these tests check: the batch split, the gradient all-reduce and
# the chief's bookkeeping are the same for any model. A small rate keeps VGG16 (no batch norm, no
# pretrained weights) from diverging, where round-off differences between runs would grow.
SMALL = ["weights=none", "backbone=VGG16", "image_size=48", "epochs=1", "batch_size=8", "trainable_layers=-1",
         "mlflow=false", "learning_rate=1e-4", "dense_units=16,8,4"]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "XLA_FLAGS")}
    env.update(CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu", PYTHONPATH=str(Path(__file__).parents[1]), **extra)
    return env


def _overrides(tmp_path, data_dir, *extra):
    """SMALL, with any key that `extra` sets replaced (a key given twice is a ConfigError)."""
    given = {item.split("=", 1)[0] for item in extra}
    return [*(item for item in SMALL if item.split("=", 1)[0] not in given), f"data_dir={data_dir}",
            f"runs_dir={tmp_path / 'runs'}", f"cache_dir={tmp_path / 'cache'}", *extra]


def _weights(path):
    with np.load(path) as stored:
        return [stored[f"arr_{i}"] for i in range(len(stored.files))]


@pytest.mark.slow  # two VGG16 workers, one epoch at 48 px (~1-2 min on 2 cores)
def test_two_tensorflow_workers_end_with_the_same_weights_and_one_run_folder(synth_root, tmp_path):
    ports = [free_port(), free_port()]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    args = _overrides(tmp_path, synth_root, "distribution=multiworker", "run_name=mw")
    workers = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        log = open(tmp_path / f"worker{index}.log", "w")
        workers.append((subprocess.Popen([sys.executable, str(WORKER), str(tmp_path / f"w{index}.npz"), *args],
                                         env=_env(KERAS_BACKEND="tensorflow", TF_CONFIG=tf_config),
                                         stdout=log, stderr=subprocess.STDOUT), log))
    try:
        for process, log in workers:
            process.wait(timeout=600)
    finally:
        for process, log in workers:
            if process.poll() is None:
                process.kill()
            log.close()
    for index, (process, _) in enumerate(workers):
        assert process.returncode == 0, (tmp_path / f"worker{index}.log").read_text()[-4000:]
    chief, other = _weights(tmp_path / "w0.npz"), _weights(tmp_path / "w1.npz")
    assert len(chief) == len(other) > 0
    for a, b in zip(chief, other):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    # The weights moved: the workers agree on a trained model, not on an untouched one.
    assert json.loads((tmp_path / "w0.npz.json").read_text())["loss"]
    runs = [p for p in (tmp_path / "runs").iterdir() if not p.name.startswith(".")]  # .mw.lock: fracture/runlock.py
    assert [p.name for p in runs] == ["mw"]
    assert (runs[0] / "complete.json").is_file() and (runs[0] / "model.keras").is_file()
    assert "worker 1 of 2" in (tmp_path / "worker1.log").read_text()


# Augmentation and dropout off: their random draws for a sharded batch need not match one
# device's, which would make the curves differ for a reason this test is not about.
JAX_SMALL = ["image_size=32", "epochs=2", "flip=false", "rotation=0", "zoom=0", "dropout=0"]


def _jax_run(tmp_path, data_dir, name, devices, *extra):
    out = tmp_path / f"{name}.npz"
    process = subprocess.run(
        [sys.executable, str(WORKER), str(out),
         *_overrides(tmp_path, data_dir, *JAX_SMALL, f"run_name={name}", *extra)],
        env=_env(KERAS_BACKEND="jax", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}"),
        capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    return json.loads(Path(f"{out}.json").read_text())["loss"], process.stdout + process.stderr


@pytest.mark.slow  # two JAX training runs of two epochs, VGG16 at 32 px
def test_jax_data_parallel_over_two_devices_follows_the_one_device_loss_curve(synth_root, tmp_path):
    one, _ = _jax_run(tmp_path, synth_root, "one", 1)
    two, log = _jax_run(tmp_path, synth_root, "two", 2, "distribution=data_parallel")
    assert "distribution data_parallel: 2 device(s)" in log
    assert len(one) == len(two) == 2
    # Same seed, same global batches: two devices each take half of a batch and average the
    # gradients, the same sum as one device up to float32 round-off in another order. Seen on
    # 2 CPUs: within 1e-4 relative; with augmentation and dropout on, epoch 2 differed by 1.1e-3
    # (their random draws), so 1e-4 is tight enough to notice a change in what is trained on.
    np.testing.assert_allclose(two, one, rtol=1e-4)
    assert one[0] != one[1]  # it trained: the curve is not a constant both runs would share


def test_multiworker_without_tf_config_is_a_config_error(monkeypatch):
    from fracture import config, distribute
    from fracture.errors import ConfigError

    monkeypatch.delenv("TF_CONFIG", raising=False)
    cfg = config.load(overrides={"distribution": "multiworker", "run_name": "x"})
    with pytest.raises(ConfigError, match="TF_CONFIG"):
        distribute.check(cfg, "tensorflow")
    with pytest.raises(ConfigError, match="KERAS_BACKEND=jax"):
        distribute.check(config.load(overrides={"distribution": "data_parallel"}), "tensorflow")


def test_tf_config_task_counts_the_chief_as_worker_zero(monkeypatch):
    from fracture import distribute

    cluster = {"chief": ["a:1"], "worker": ["b:1", "c:1"]}
    for task, expected in [({"type": "chief", "index": 0}, (0, 3)), ({"type": "worker", "index": 1}, (2, 3))]:
        monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": task}))
        assert distribute.tf_config_task() == expected


def test_worker_shards_are_disjoint_equal_length_and_cover_the_data():
    from fracture.data import make_batches

    images = np.arange(21, dtype=np.uint8).reshape(21, 1, 1, 1)
    labels = np.zeros(21, np.float32)
    seen = []
    for index in range(2):
        batches = make_batches(images, labels, 4, shuffle=True, seed=5, shard=(index, 2))
        assert len(batches) == 3  # ceil(21 / (4 * 2)) on both workers: the collective steps match
        rows = [int(v) for p in range(len(batches)) for v in batches[p][0].ravel()]
        seen.append(rows)
    own = [set(r) for r in seen]
    assert own[0].isdisjoint(own[1])  # top-ups repeat a worker's own rows only
    assert own[0] | own[1] == set(range(21))
    np.testing.assert_array_equal(sorted(set(seen[0])), sorted(set(np.random.default_rng(5).permutation(21)[0::2])))


def test_padded_evaluation_batches_weigh_the_padding_zero():
    from fracture.data import make_batches

    images = np.arange(5, dtype=np.uint8).reshape(5, 1, 1, 1)
    batches = make_batches(images, np.ones(5, np.float32), 4, shuffle=False, pad=True)
    x, _, w = batches[1]
    assert x.shape[0] == 4 and w.sum() == 1.0
    assert x.ravel()[w == 1].tolist() == [4.0]
