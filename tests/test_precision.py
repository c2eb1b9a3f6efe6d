"""Mixed precision is scoped to the build and survives save/load; the decode cache is memory-mapped."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fracture as fr
from tests.conftest import tiny_config, train_keeping_the_model

LOAD_AND_PREDICT = """
import sys, numpy as np, keras
assert keras.config.dtype_policy().name == "float32"
model = keras.saving.load_model(sys.argv[1], compile=False)
x = np.load(sys.argv[2])
np.save(sys.argv[3], model.predict(x, verbose=0).reshape(-1))
"""


@pytest.mark.slow  # its own training run under mixed_bfloat16, then a fresh process
def test_a_bfloat16_model_reloads_in_a_fresh_process_and_predicts_the_same(train_data, tmp_path, monkeypatch):
    import keras

    # VGG16: what is checked (the policy scoped to the build, a float32 output, the round trip) does
    # not depend on the backbone, and its 19 layers trace in a fraction of DenseNet121's time.
    cfg = tiny_config(tmp_path, train_data, precision="mixed_bfloat16", run_name="bf16", backbone="VGG16")
    run_dir, fitted = train_keeping_the_model(cfg, monkeypatch)
    assert keras.config.dtype_policy().name == "float32"  # the build did not leave its policy behind
    assert fitted.get_layer("dense_1").dtype_policy.name == "mixed_bfloat16"
    assert fitted.output.dtype == "float32"
    x = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 1)).astype(np.float32)
    expected = fitted.predict(x, verbose=0).reshape(-1)  # the training process's own model
    np.save(tmp_path / "x.npy", x)
    subprocess.run([sys.executable, "-c", LOAD_AND_PREDICT, str(run_dir / "model.keras"), str(tmp_path / "x.npy"),
                    str(tmp_path / "p.npy")], check=True, timeout=300)
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), expected, atol=1e-2)


def test_the_decode_cache_is_read_memory_mapped_and_matches_a_fresh_decode(synth_root, tmp_path):
    paths = sorted(Path(synth_root).rglob("*.png"))[:5]
    direct, ok, _ = fr.load_images(paths, 32)  # no cache: decoded in memory
    first, ok1, _ = fr.load_images(paths, 32, tmp_path)
    again, ok2, _ = fr.load_images(paths, 32, tmp_path)
    assert isinstance(first, np.memmap) and isinstance(again, np.memmap) and not again.flags.writeable
    np.testing.assert_array_equal(again, direct)
    np.testing.assert_array_equal(ok2, ok)
    assert [p.suffix for p in tmp_path.glob("*.npy")].count(".npy") == 2  # images + ok, no temporary left
    assert not list(tmp_path.glob("*.tmp*"))


def test_rows_view_reads_the_rows_it_names_in_order():
    from fracture.data import Rows

    base = np.arange(10).reshape(10, 1)
    rows = Rows(base, [1, 4, 7])
    assert len(rows) == 3 and rows.shape == (3, 1)
    np.testing.assert_array_equal(rows[np.array([2, 0])], [[7], [1]])
    np.testing.assert_array_equal(np.asarray(rows), [[1], [4], [7]])
