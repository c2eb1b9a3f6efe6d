"""Data beyond RAM: peak memory of training from a decode cache larger than the memory allowed.

The cache is written directly in fracture.data's format (`<cache_key>.npy` + `.ok.npy`, keyed by
the real file list) for a class-folder dataset of N hard links to one tiny PNG, so no decoding is
timed and the disk holds N x size^2 bytes once. Then a child process runs the training data path
as `fracture.training` does (split_arrays -> memory-mapped cache -> make_batches -> fit) for --steps
steps, and afterwards reads every batch of the epoch (every row of the cache, as a full epoch of
fit would) without training on them, so the whole file passes through memory on a CPU.

Two measures of the child, and why both:
  peak RSS (ru_maxrss)  resident pages, anonymous + file-backed. Pages of a memory-mapped file
                        count while mapped, so with free RAM this grows towards the cache size
                        even though the kernel may drop them at any time (they are clean copies
                        of the file).
  peak RssAnon          what the process holds that cannot be dropped (model, batches, Python).
The real test is a cgroup memory cap below the cache size (--cap-gb; cgroup v1 or v2, needs
permission to create a child cgroup): the child finishes under it. --control runs the same cap on
a child that copies the cache into RAM (np.load without mmap_mode), which must be killed, showing
the cap bites. The cache file is dropped from the page cache before each child (posix_fadvise), so
its pages are charged to the child's cgroup as it reads them.

    python benchmarks/memory.py [--images 30000] [--image-size 320] [--cap-gb 2.0] [--control]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

PNG_SIZE = 8  # the linked source image; its pixels never matter (the cache is written directly)


def make_dataset(root: Path, images: int, val_images: int) -> None:
    """root/{train,val}/{normal,fractured}/NNNNNN.png as hard links to one tiny PNG."""
    import cv2

    source = root / "source.png"
    root.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(source), np.zeros((PNG_SIZE, PNG_SIZE), np.uint8))
    for split, count in (("train", images), ("val", val_images)):
        for i in range(count):
            folder = root / split / ("fractured" if i % 2 else "normal")
            folder.mkdir(parents=True, exist_ok=True)
            os.link(source, folder / f"{i:06d}.png")


def write_caches(cfg, seed: int = 0) -> list[Path]:
    """Random uint8 images at cfg.image_size in the cache files split_arrays will look up."""
    from fracture import data

    frame = data.load_index(cfg)
    rng = np.random.default_rng(seed)
    files = []
    for split in ("train", "val"):
        paths = frame.loc[frame["split"] == split, "path"].reset_index(drop=True)
        cache = Path(cfg.cache_dir) / f"{data.cache_key(paths, cfg.image_size, cfg.max_pixels)}.npy"
        cache.parent.mkdir(parents=True, exist_ok=True)
        size = cfg.image_size
        images = np.lib.format.open_memmap(cache, mode="w+", dtype=np.uint8, shape=(len(paths), size, size, 1))
        for start in range(0, len(paths), 512):  # chunks: the writer never holds the array either
            stop = min(start + 512, len(paths))
            images[start:stop] = rng.integers(0, 256, (stop - start, size, size, 1), dtype=np.uint8)
        images.flush()
        del images
        np.save(cache.with_suffix(".ok.npy"), np.ones(len(paths), bool))
        cache.with_suffix(".skipped.csv").write_text("path,reason\n")
        files.append(cache)
    return files


def drop_from_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# a memory cap: a child cgroup of this process's own (v2 memory.max, v1 memory.limit_in_bytes)
# --------------------------------------------------------------------------------------------
def make_cgroup(cap_bytes: int) -> tuple[Path | None, str]:
    """(folder whose cgroup.procs a child writes itself into, how) or (None, why not)."""
    name = f"fracture-memory-{os.getpid()}"
    lines = Path("/proc/self/cgroup").read_text().splitlines()
    v1 = [line.split(":", 2)[2] for line in lines if line.split(":", 2)[1] == "memory"]
    v2 = [line.split(":", 2)[2] for line in lines if line.startswith("0::")]
    tries = []
    if v1:
        tries.append((Path("/sys/fs/cgroup/memory") / v1[0].lstrip("/") / name, "memory.limit_in_bytes", "v1"))
    if v2:
        tries.append((Path("/sys/fs/cgroup") / v2[0].lstrip("/") / name, "memory.max", "v2"))
    reasons = []
    for folder, limit_file, version in tries:
        try:
            folder.mkdir()
            (folder / limit_file).write_text(str(cap_bytes))
            if version == "v2":
                (folder / "memory.swap.max").write_text("0")
            return folder, f"cgroup {version} {folder}"
        except OSError as exc:
            reasons.append(f"{version}: {exc}")
            if folder.is_dir():
                folder.rmdir()
    return None, "no cgroup memory cap possible (" + "; ".join(reasons or ["no memory controller"]) + ")"


def run_child(args: list[str], cgroup: Path | None) -> tuple[int, dict, str, float]:
    """(exit code, the child's JSON report, its output tail, its ru_maxrss in bytes)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    command = [sys.executable, __file__, *args]
    if cgroup is not None:  # the shell joins the cgroup, then becomes python: the cap is on it alone
        command = ["sh", "-c", f'echo $$ > "{cgroup}/cgroup.procs" && exec "$@"', "sh", *command]
    process = subprocess.run(command, capture_output=True, text=True)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    report = {}
    for line in process.stdout.splitlines():
        if line.startswith("MEMORY "):
            report = json.loads(line[len("MEMORY "):])
    # ru_maxrss is the largest child so far (KiB on Linux): only meaningful if this one is the largest.
    maxrss = peak * 1024 if peak > before else float("nan")
    return process.returncode, report, (process.stdout + process.stderr)[-1500:], maxrss


# --------------------------------------------------------------------------------------------
# the child
# --------------------------------------------------------------------------------------------
class Peaks(threading.Thread):
    """Samples /proc/self/status every 50 ms: peak RssAnon and RssFile (bytes)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peaks = {"RssAnon": 0, "RssFile": 0, "VmHWM": 0}

    def sample(self):
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in self.peaks:
                self.peaks[key] = max(self.peaks[key], int(value.split()[0]) * 1024)

    def run(self):
        while True:
            self.sample()
            time.sleep(0.05)


def child_train(cfg_json: str, steps: int) -> None:
    peaks = Peaks()
    peaks.start()
    from fracture import config, data
    from fracture.model import build_model
    from fracture.training import compile_model

    cfg = config.load(overrides=json.loads(cfg_json), frozen_random_backbone=True)  # memory only
    frame = data.load_index(cfg)
    arrays = data.split_arrays(frame, cfg)
    _, x_train, y_train = arrays["train"]
    batches = data.make_batches(x_train, y_train, cfg.batch_size, shuffle=True, seed=cfg.seed)
    model = build_model(cfg)
    compile_model(model, cfg)
    start = time.perf_counter()
    model.fit(batches, steps_per_epoch=steps, epochs=1, verbose=0)
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    for position in range(len(batches)):  # the rest of the epoch's reads: every row of the cache
        batches[position]
    read_seconds = time.perf_counter() - start
    peaks.sample()
    if not peaks.is_alive():
        raise RuntimeError("the memory sampler thread died: its peaks are not the run's")
    print("MEMORY " + json.dumps({"vm_hwm": peaks.peaks["VmHWM"], "peak_rss_anon": peaks.peaks["RssAnon"],
                                  "peak_rss_file": peaks.peaks["RssFile"],
                                  "rows": len(y_train), "batches_read": len(batches), "fit_seconds": fit_seconds,
                                  "read_seconds": read_seconds, "memmap": isinstance(x_train, np.memmap)}))


def child_copy(cache: str) -> None:
    """The control: the cache copied into RAM, as a non-memory-mapped loader would."""
    images = np.load(cache)  # no mmap_mode: reads the whole file into an anonymous array
    print("MEMORY " + json.dumps({"copied_bytes": images.nbytes}))


def gib(n) -> str:
    return f"{n / 2**30:.2f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=30000, help="training images in the cache")
    parser.add_argument("--image-size", type=int, default=320)
    parser.add_argument("--backbone", default="DenseNet121")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="training steps fitted (all batches are read)")
    parser.add_argument("--trainable-layers", type=int, default=60)
    parser.add_argument("--cap-gb", type=float, default=2.0, help="cgroup memory cap for the child; 0 = none")
    parser.add_argument("--control", action="store_true", help="also run a copy-into-RAM child under the cap")
    parser.add_argument("--work", help="folder for the data and cache (default: a temporary one, removed)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--child-copy", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child_train(args.child[0], int(args.child[1]))
    if args.child_copy:
        return child_copy(args.child_copy)

    from fracture import config

    work = Path(args.work or tempfile.mkdtemp(prefix="fracture-memory-"))
    cgroup = None
    try:
        overrides = dict(data_dir=str(work / "data"), data_format="folders", cache_dir=str(work / "cache"),
                         image_size=args.image_size, backbone=args.backbone, weights="none", epochs=1,
                         batch_size=args.batch_size, trainable_layers=args.trainable_layers, mlflow=False)
        cfg = config.load(overrides=overrides, frozen_random_backbone=True)  # memory does not depend on the weights
        start = time.perf_counter()
        make_dataset(work / "data", args.images, val_images=16)
        train_cache, val_cache = write_caches(cfg)
        print(f"cache: {train_cache.stat().st_size / 2**30:.2f} GiB ({args.images} images at {args.image_size} px), "
              f"written in {time.perf_counter() - start:.0f} s to {work}")
        how = "no cap (--cap-gb 0)"
        if args.cap_gb:
            cgroup, how = make_cgroup(int(args.cap_gb * 2**30))
        print(f"memory cap {args.cap_gb} GiB: {how}")
        drop_from_page_cache(train_cache)
        code, report, tail, maxrss = run_child(["--child", json.dumps(overrides), str(args.steps)], cgroup)
        if code:
            print(f"training child failed (exit {code}):\n{tail}")
        else:
            print(f"training child: fit {args.steps} steps in {report['fit_seconds']:.0f} s, then read all "
                  f"{report['batches_read']} batches ({report['rows']} rows) in {report['read_seconds']:.0f} s; "
                  f"memmap={report['memmap']}")
            print(f"  peak RSS (ru_maxrss, anon + file-backed): {gib(maxrss)}   (VmHWM read by the child: "
                  f"{gib(report['vm_hwm'])})")
            print(f"  peak RssAnon: {gib(report['peak_rss_anon'])}   peak RssFile: {gib(report['peak_rss_file'])}")
            print(f"  cache file: {gib(train_cache.stat().st_size)}")
        if args.control and cgroup is not None:
            drop_from_page_cache(train_cache)
            code, report, tail, _ = run_child(["--child-copy", str(train_cache)], cgroup)
            print(f"control (np.load without mmap under the same cap): "
                  f"{'killed, exit ' + str(code) if code else 'finished: the cap did not bite'}")
    finally:
        if cgroup is not None:
            cgroup.rmdir()
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
