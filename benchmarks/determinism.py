"""What `deterministic=true` costs, and whether it repeats: the same small training with and without.

Each run is its own `python -m fracture train` process (the deterministic switches cannot be turned
off inside a process), alternating off/on so a busy machine slows both alike. Reported: the fit time
of each run (metrics.json `train_seconds`: epochs only, no imports or decoding) and whether the runs
of one mode wrote byte-identical history.csv and predictions_val.csv. Ends with the machine it ran on.

    python benchmarks/determinism.py [--repeats 2] [--backbone DenseNet121] [--image-size 64] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from fracture import machine


def train(work: Path, data_dir: Path, name: str, args, deterministic: bool) -> Path:
    command = [sys.executable, "-m", "fracture", "-q", "train", f"data_dir={data_dir}", f"runs_dir={work / 'runs'}",
               f"cache_dir={work / 'cache'}", f"run_name={name}", f"backbone={args.backbone}", "weights=none",
               "trainable_layers=-1", f"image_size={args.image_size}", f"epochs={args.epochs}", "batch_size=8",
               "mlflow=false", "bootstrap_resamples=0", f"deterministic={str(deterministic).lower()}"]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return work / "runs" / name


def identical(runs: list[Path]) -> bool:
    files = ("history.csv", "predictions_val.csv")
    return all((run / f).read_bytes() == (runs[0] / f).read_bytes() for run in runs[1:] for f in files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2, help="runs per mode")
    parser.add_argument("--backbone", default="DenseNet121")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--patients", type=int, default=24)
    args = parser.parse_args()
    from fracture.synth import generate

    work = Path(tempfile.mkdtemp(prefix="fracture-determinism-"))
    try:
        data_dir = generate(work / "data", patients=args.patients, seed=0, max_size=128)
        runs = {False: [], True: []}
        for i in range(args.repeats):
            for mode in (False, True):
                runs[mode].append(train(work, data_dir, f"{'on' if mode else 'off'}-{i}", args, mode))
        counts = json.loads((runs[False][0] / "metrics.json").read_text())["counts"]
        print(f"{args.backbone}, {args.image_size} px, {counts['train']} training images, {args.epochs} epochs, "
              f"batch 8, {args.repeats} runs per mode")
        print(f"{'deterministic':>13}  {'fit seconds per run':<28} {'median':>7}  identical reruns")
        medians = {}
        for mode, folders in runs.items():
            seconds = [json.loads((f / "metrics.json").read_text())["train_seconds"] for f in folders]
            medians[mode] = statistics.median(seconds)
            print(f"{str(mode).lower():>13}  {', '.join(f'{s:.1f}' for s in seconds):<28} {medians[mode]:>7.1f}  "
                  f"{'yes' if identical(folders) else 'no'}")
        print(f"cost: {100 * (medians[True] / medians[False] - 1):+.0f} % fit time")
        print(f"machine: {machine.one_line()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
