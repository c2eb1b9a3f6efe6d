"""Latency and peak memory of a run's exported model.onnx on onnxruntime against its model.keras on
Keras, on the same images, each in a fresh process (peak RSS includes importing the runtime).

    python benchmarks/onnx_vs_keras.py --run saved_models/<run> [--images N] [--repeats R]

Exports the ONNX model first when the run has none. Prints one table; docs/export.md records it.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, statistics, sys, time
import numpy as np
runtime, path, images_file, repeats = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
images = np.load(images_file)


def peak_rss_mib():
    # VmHWM: this process image's own peak. ru_maxrss is not: on Linux a child starts from its
    # parent's peak at fork (here the parent holds a loaded model), so both runtimes read the same.
    try:
        with open("/proc/self/status") as status:
            return next(int(l.split()[1]) for l in status if l.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


started = time.perf_counter()
if runtime == "onnxruntime":
    from fracture.onnx_serving import OnnxModel
    model = OnnxModel(path)
    predict = model.predict
else:
    import keras
    model = keras.saving.load_model(path, compile=False)
    predict = lambda x: np.asarray(model.predict_on_batch(x.astype(np.float32))).reshape(-1)
load_s = time.perf_counter() - started
predict(images[:1]); predict(images)  # warm up both shapes
one = []
for i in range(repeats):
    t = time.perf_counter(); predict(images[i % len(images):][:1]); one.append(time.perf_counter() - t)
batch = []
for _ in range(max(3, repeats // 10)):
    t = time.perf_counter(); out = predict(images); batch.append(time.perf_counter() - t)
print(json.dumps({"runtime": runtime, "load_s": load_s, "batch1_ms": 1000 * statistics.median(one),
                  "batch_ms": 1000 * statistics.median(batch), "batch": len(images),
                  "peak_rss_mib": peak_rss_mib(),
                  "probabilities": np.asarray(out, float).reshape(-1).tolist()}))
"""


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="run folder (default: newest in saved_models/)")
    parser.add_argument("--images", type=int, default=16, help="test images, also the batch size")
    parser.add_argument("--repeats", type=int, default=50, help="batch-1 calls timed")
    args = parser.parse_args()

    import numpy as np
    import pandas as pd

    import fracture as fr
    from fracture.export import export_path, export_run

    run = fr.load_run(args.run)
    onnx_file = export_path(run.path, "onnx")
    if not onnx_file.is_file():
        export_run(run, "onnx")
    size = int(run.model.input_shape[1])
    paths = pd.read_csv(run.path / "predictions_test.csv")["path"].head(args.images)
    images, ok, _ = fr.load_images(paths, size)
    images_file = run.path / "export" / "benchmark_images.npy"
    np.save(images_file, np.asarray(images[ok]))
    results = []
    for runtime, model_file in (("keras", run.path / "model.keras"), ("onnxruntime", onnx_file)):
        done = subprocess.run([sys.executable, "-c", CHILD, runtime, str(model_file), str(images_file),
                               str(args.repeats)], capture_output=True, text=True, check=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    images_file.unlink()
    keras_result, onnx_result = results
    difference = np.abs(np.subtract(keras_result["probabilities"], onnx_result["probabilities"])).max()
    print(f"run {run.name}: {run.config.backbone} at {size} px, {len(paths)} test images; CPU {cpu_model()}")
    print(f"{'runtime':<12} {'load s':>7} {'batch 1 ms':>11} {'batch ' + str(len(paths)) + ' ms':>12} {'peak RSS MiB':>13}")
    for r in results:
        print(f"{r['runtime']:<12} {r['load_s']:>7.2f} {r['batch1_ms']:>11.1f} {r['batch_ms']:>12.1f} "
              f"{r['peak_rss_mib']:>13.0f}")
    print(f"ratio keras/onnxruntime: batch 1 {keras_result['batch1_ms'] / onnx_result['batch1_ms']:.2f}x, "
          f"batch {len(paths)} {keras_result['batch_ms'] / onnx_result['batch_ms']:.2f}x, "
          f"peak memory {keras_result['peak_rss_mib'] / onnx_result['peak_rss_mib']:.2f}x; "
          f"max |probability difference| {difference:.1e}")


if __name__ == "__main__":
    main()
