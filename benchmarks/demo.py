"""The demo's numbers as distributions: `make demo` once per seed, then mean, min and max.

    python benchmarks/demo.py --seeds 5            # seeds 1..5 (make demo's own seed is 1)
    python benchmarks/demo.py --seeds 4,5          # these seeds, added to the table of the same recipe
    python benchmarks/demo.py --from-log LOG       # the table from the per-seed lines of an earlier run's output
    python benchmarks/demo.py --check RUN_DIR      # one run against the documented range
    python benchmarks/demo.py --reread             # the table again from its runs' folders (after re-scoring)
    python benchmarks/demo.py --docs               # README's and docs/demo.md's tables from the JSON

Each seed runs the real `make demo` (train, evaluate --split test, cam --evaluate, cam panels)
with `DEMO_ARGS="seed=N"` into its own run folder under --runs-dir, and an MLflow store of its
own, so the user's runs and experiments are left alone. The seed changes the weights'
initialisation, the validation patients and the batch order, as another CPU's rounding does
(docs/reproducibility.md). The venv and the synthetic data are made before the first seed and not
timed per seed; their one-off time is printed.

Writes benchmarks/results/demo-seeds.json and .md (the table README and docs quote) after every
seed, naming the CPU model and the versions. Seeds of the same recipe (configs/demo.yaml and the
data arguments of `make data`, and how `make demo` scores the pointing game) accumulate across
invocations; a changed recipe starts a new table. `--check` is what `make demo` ends with: it reads one run's
metrics.json and cam_eval.csv and says plainly which number falls outside the documented range
or misses its target.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "demo-seeds.json"

# name -> (label, target as (comparison, value) or None); the order of the table
METRICS = {
    "val_auc": ("validation AUC (image)", (">=", 0.95)),
    "test_image_auc": ("test image AUC", None),
    "test_image_kappa": ("test image kappa", None),
    "test_study_auc": ("test study AUC", None),
    "test_study_kappa": ("test study kappa", (">=", 0.8)),
    "threshold": ("threshold (chosen on val)", None),
    "pointing_game": ("Grad-CAM pointing game, relu", (">=", 0.8)),
    "marker_peak": ("Grad-CAM peak on a side marker", ("<=", 0.05)),
    "epochs": ("epochs trained", None),
    "best_epoch": ("best epoch", None),
    "train_seconds": ("training seconds", None),
    "demo_seconds": ("make demo seconds", ("<=", 900)),
}


def run_numbers(run_dir: Path) -> dict:
    """The table's numbers for one finished demo run, read from its own files."""
    import pandas as pd

    metrics = json.loads((run_dir / "metrics.json").read_text())
    if "test" not in metrics:
        raise SystemExit(f"{run_dir} has no test scores: run `python -m fracture evaluate --run {run_dir} --split test`")
    cam = pd.read_csv(run_dir / "cam_eval.csv")
    row = cam[(cam["method"] == "gradcam") & (cam["layer"] == "relu")]
    if row.empty:
        raise SystemExit(f"{run_dir}/cam_eval.csv has no gradcam/relu row: run `python -m fracture cam --run "
                         f"{run_dir} --evaluate --layers relu --methods gradcam --steps 0`")
    row = row.iloc[0]
    return {
        "run": run_dir.name,
        "val_auc": metrics["val"]["image"]["auc"],
        "test_image_auc": metrics["test"]["image"]["auc"],
        "test_image_kappa": metrics["test"]["image"]["kappa"],
        "test_study_auc": metrics["test"]["study"]["auc"],
        "test_study_kappa": metrics["test"]["study"]["kappa"],
        "threshold": metrics["threshold"],
        "pointing_game": float(row["pointing_game"]),
        "pointing_images": int(row["n_images"]),
        "marker_peak": float(row["distractor_peak"]),
        "epochs": metrics["epochs_run"],
        "best_epoch": metrics["best_epoch"],
        "train_seconds": metrics["train_seconds"],
        "machine": metrics.get("machine", {}),
    }


def cpu_model() -> str:
    """The CPU's model name as lscpu prints it (the machine every number here belongs to)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return fields.get("Model name", "unknown CPU").strip()


def versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("keras", "tensorflow-cpu", "tensorflow", "jax", "torch", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def meets(value: float, target) -> bool:
    op, bound = target
    return value >= bound if op == ">=" else value <= bound


def summarize(runs: list[dict]) -> dict:
    return {k: {"mean": statistics.fmean(r[k] for r in runs), "min": min(r[k] for r in runs),
                "max": max(r[k] for r in runs)} for k in METRICS if all(k in r for r in runs)}


def fmt(key: str, value: float) -> str:
    return f"{value:.0f}" if key in ("epochs", "best_epoch", "train_seconds", "demo_seconds") else f"{value:.3f}"


def markdown(result: dict) -> str:
    seeds = [r["seed"] for r in result["runs"]]
    lines = [f"`make demo` over seeds {', '.join(map(str, seeds))} on {result['cpu']} "
             f"({result['cores']} cores), {result['date']}; "
             + ", ".join(f"{k} {v}" for k, v in result["versions"].items()) + ".", "",
             "| metric | mean | min | max | target | " + " | ".join(f"seed {s}" for s in seeds) + " |",
             "|---|---|---|---|---|" + "---|" * len(seeds)]
    for key, (label, target) in METRICS.items():
        if key not in result["summary"]:
            continue
        s = result["summary"][key]
        goal = f"{target[0].replace('>=', '≥').replace('<=', '≤')} {fmt(key, target[1])}" if target else ""
        cells = []
        for r in result["runs"]:
            cell = fmt(key, r[key])
            cells.append(f"**{cell}**" if target and not meets(r[key], target) else cell)
        lines.append(f"| {label} | {fmt(key, s['mean'])} | {fmt(key, s['min'])} | {fmt(key, s['max'])} | {goal} | "
                     + " | ".join(cells) + " |")
    lines.append("")
    setup = (f"; venv and data made once before the seeds ({result['setup_seconds']:.0f} s, not in the per-seed "
             "time)" if result.get("setup_seconds") else "")
    images = sorted({r["pointing_images"] for r in result["runs"] if "pointing_images" in r})
    if images:
        lines.append(f"The pointing game counts {' or '.join(map(str, images))} positive test images per seed "
                     "(every one with a fracture box).")
    if result.get("rescored"):
        lines.append(f"Scores re-read from the run folders on {result['rescored']} "
                     "(`python benchmarks/demo.py --reread`); the seconds are those measured on the first date.")
    lines.append(f"A bold cell misses its target. Produced by `python benchmarks/demo.py --seeds "
                 f"{','.join(map(str, seeds))}` (recipe {result.get('recipe', '?')}){setup}.")
    return "\n".join(lines) + "\n"


# README's short table: (label, metric key), in the order a reader asks
README_ROWS = [
    ("validation AUC", "val_auc"),
    ("test study kappa (threshold from validation)", "test_study_kappa"),
    ("test image AUC", "test_image_auc"),
    ("test study AUC", "test_study_auc"),
    ("Grad-CAM pointing game, last layer", "pointing_game"),
    ("Grad-CAM peak on a side marker", "marker_peak"),
    ("epochs trained", "epochs"),
    ("`make demo` minutes", "demo_seconds"),
]
README_MARKERS = ("<!-- demo-table -->", "<!-- /demo-table -->")
DOCS_MARKERS = ("<!-- seeds -->", "<!-- /seeds -->")


def readme_table(result: dict) -> str:
    """The short table README quotes: target, mean and min-max over the seeds of `result`."""
    def cell(key, value):
        return f"{value / 60:.1f}" if key == "demo_seconds" else fmt(key, value)

    lines = [f"| over {len(result['runs'])} seeds | target | mean | min – max |", "|---|---|---|---|"]
    for label, key in README_ROWS:
        s, target = result["summary"][key], METRICS[key][1]
        goal = f"{target[0].replace('>=', '≥').replace('<=', '≤')} {cell(key, target[1])}" if target else ""
        lines.append(f"| {label} | {goal} | {cell(key, s['mean'])} | {cell(key, s['min'])} – {cell(key, s['max'])} |")
    return "\n".join(lines)


def replace_block(text: str, markers: tuple[str, str], body: str) -> str:
    start, end = text.index(markers[0]) + len(markers[0]), text.index(markers[1])
    return text[:start] + "\n" + body.strip("\n") + "\n" + text[end:]


def write_docs(result: dict) -> list[Path]:
    """README's short table and docs/demo.md's per-seed table, rewritten from `result`."""
    from fracture.fileio import atomic_write_text

    targets = [(ROOT / "README.md", README_MARKERS, readme_table(result)),
               (ROOT / "docs" / "demo.md", DOCS_MARKERS, markdown(result))]
    texts = [path.read_text() for path, _, _ in targets]
    for (path, markers, _), text in zip(targets, texts):
        if not all(marker in text for marker in markers):  # checked for both files before writing either
            raise SystemExit(f"{path} lacks the lines {markers[0]} and {markers[1]} that mark where the "
                             "table goes: put them back around the table (nothing was written)")
    for (path, markers, body), text in zip(targets, texts):
        atomic_write_text(path, replace_block(text, markers, body))
    return [path for path, _, _ in targets]


def recipe() -> str:
    """A fingerprint of what the demo trains and how it is scored: the settings in configs/demo.yaml
    (parsed, so a reworded comment keeps the table), `make data`'s arguments and `make demo`'s
    `cam --evaluate` line (which test positives the pointing game uses)."""
    from fracture.config import read_yaml  # the loader `train --config` uses (a key given twice is an error)

    makefile = (ROOT / "Makefile").read_text()
    synth_args = re.search(r"^SYNTH_ARGS :=(.*)$", makefile, re.M)
    cam_line = re.search(r"^\t.*-m fracture cam .*--evaluate.*$", makefile, re.M)
    settings = read_yaml(ROOT / "configs" / "demo.yaml")
    text = json.dumps(settings, sort_keys=True) + (synth_args.group(1) if synth_args else "")
    text += cam_line.group(0).strip() if cam_line else ""
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def machines(runs: list[dict]) -> str:
    """The CPU every seed ran on, from its own metrics.json: seeds added to a table on another
    machine must not be credited to this one."""
    seeds_by_cpu: dict[str, list[int]] = {}
    for r in runs:
        seeds_by_cpu.setdefault(r.get("machine", {}).get("cpu_model") or cpu_model(), []).append(r["seed"])
    if len(seeds_by_cpu) == 1:
        return next(iter(seeds_by_cpu))
    return "; ".join(f"{cpu} (seeds {', '.join(map(str, seeds))})" for cpu, seeds in seeds_by_cpu.items())


def table(runs: list[dict], setup_seconds: float) -> dict:
    runs = sorted(runs, key=lambda r: r["seed"])
    return {"date": date.today().isoformat(), "recipe": recipe(), "cpu": machines(runs), "cores": os.cpu_count(),
            "versions": versions(), "setup_seconds": round(setup_seconds, 1), "runs": runs,
            "summary": summarize(runs)}


def earlier_runs(out: Path, seeds: list[int]) -> list[dict]:
    """Runs of the same recipe already in `out` (other seeds than these), so tables accumulate."""
    if not out.is_file():
        return []
    stored = json.loads(out.read_text())
    if stored.get("recipe") != recipe():
        print(f"{out} holds another recipe ({stored.get('recipe')}): starting a new table", flush=True)
        return []
    return [r for r in stored["runs"] if r["seed"] not in seeds]


def write(result: dict, out: Path) -> None:
    from fracture.fileio import atomic_write_text

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    atomic_write_text(out.with_suffix(".md"), markdown(result))


def run_seeds(seeds: list[int], runs_dir: Path, out: Path) -> dict:
    started = time.perf_counter()
    subprocess.run(["make", "-C", str(ROOT), "data"], check=True)  # the venv too (make data needs it)
    setup = time.perf_counter() - started
    stamp = time.strftime("%Y%m%d-%H%M%S")
    store = Path(tempfile.mkdtemp(prefix="demo-seeds-mlflow-"))
    runs = earlier_runs(out, seeds)
    for seed in seeds:
        name = f"seeds-{stamp}-s{seed}"
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store}/mlflow.db"}
        cmd = ["make", "-C", str(ROOT), "demo", f"DEMO_RUN={name}", f"DEMO_RUNS_DIR={runs_dir}",
               f"DEMO_ARGS=seed={seed}"]
        print("$", " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        done = subprocess.run(cmd, env=env)
        seconds = time.perf_counter() - t0
        if done.returncode:
            raise SystemExit(f"make demo failed for seed {seed} (exit {done.returncode})")
        numbers = {"seed": seed, **run_numbers(runs_dir / name), "demo_seconds": round(seconds, 1)}
        runs.append(numbers)
        print(json.dumps({k: v for k, v in numbers.items() if k != "machine"}), flush=True)
        write(table(runs, setup), out)  # after every seed: a long benchmark stopped early keeps its seeds
    return table(runs, setup)


def reread(out: Path, runs_dir: Path) -> dict:
    """The stored table rebuilt from its runs' folders under the current recipe, each run keeping its
    measured `make demo` seconds: for after `cam --evaluate` was run again on those folders."""
    stored = json.loads(out.read_text())
    runs = [{"seed": r["seed"], **run_numbers(runs_dir / r["run"]), "demo_seconds": r["demo_seconds"]}
            for r in stored["runs"]]
    result = table(runs, stored.get("setup_seconds", 0.0))
    result["date"], result["rescored"] = stored["date"], date.today().isoformat()
    return result


def from_log(log_file: Path) -> list[dict]:
    """The per-seed JSON lines that run_seeds printed, read back from its saved output."""
    runs = [json.loads(line) for line in log_file.read_text().splitlines() if line.startswith('{"seed": ')]
    if not runs:
        raise SystemExit(f"{log_file} holds no per-seed lines of benchmarks/demo.py")
    return runs


def check(run_dir: Path, results: Path = RESULTS) -> list[str]:
    """Lines comparing one run with the documented range; a number outside it or off its target says so."""
    numbers = run_numbers(run_dir)
    documented = json.loads(results.read_text()) if results.is_file() else None
    if documented and documented.get("recipe") not in (None, recipe()):
        lines = [f"demo check of {run_dir.name}: {results} documents another recipe "
                 f"({documented.get('recipe')}, this one is {recipe()}): targets only"]
        documented = None
    else:
        lines = [f"demo check of {run_dir.name}: " + (
            f"documented range = {len(documented['runs'])} seeds on {documented['cpu']} ({results})"
            if documented else f"no documented range yet ({results} missing): targets only")]
    outside = []
    for key, (label, target) in METRICS.items():
        if key not in numbers:
            continue
        value, verdicts = numbers[key], []
        span = documented["summary"].get(key) if documented else None
        if span:
            inside = span["min"] <= value <= span["max"]
            verdicts.append("inside the range" if inside else
                            f"OUTSIDE the documented range {fmt(key, span['min'])}–{fmt(key, span['max'])}")
            if not inside:
                outside.append(label)
        if target:
            ok = meets(value, target)
            verdicts.append(f"target {target[0]} {fmt(key, target[1])} {'met' if ok else 'MISSED'}")
            if not ok:
                outside.append(label)
        lines.append(f"  {label:<32} {fmt(key, value):>7}   {'; '.join(verdicts)}")
    if outside:
        lines.append("This run is not like the documented ones in: " + ", ".join(dict.fromkeys(outside)) +
                     ". Another CPU or library version moves training from scratch (docs/reproducibility.md); "
                     "compare over several seeds with `python benchmarks/demo.py --seeds 5`.")
    elif documented:
        lines.append("Every number is inside the documented range and meets its target.")
    else:
        lines.append("Every number meets its target (no documented range to compare with yet).")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", help="a count N (seeds 1..N) or a comma list of seeds")
    parser.add_argument("--check", metavar="RUN_DIR", help="compare one finished demo run with the documented range")
    parser.add_argument("--from-log", metavar="LOG", help="build the table from the saved output of an earlier run")
    parser.add_argument("--runs-dir", default=str(ROOT / "saved_models"), help="where the seeds' run folders go")
    parser.add_argument("--reread", action="store_true",
                        help="rebuild the JSON from its runs' folders, keeping their seconds (after re-scoring them)")
    parser.add_argument("--docs", action="store_true",
                        help="rewrite README's demo table and docs/demo.md's seed table from the JSON")
    parser.add_argument("--out", default=str(RESULTS),
                        help="the JSON written (and a .md beside it); --check reads it")
    args = parser.parse_args()
    if args.check:
        print("\n".join(check(Path(args.check), Path(args.out))))
        return
    out = Path(args.out)
    if args.docs:
        for path in write_docs(json.loads(out.read_text())):
            print(f"rewritten from {out}: {path}")
        return
    if args.from_log:
        runs = from_log(Path(args.from_log))
        result = table(earlier_runs(out, [r["seed"] for r in runs]) + runs, 0.0)
        write(result, out)
    elif args.reread:
        result = reread(out, Path(args.runs_dir).resolve())
        write(result, out)
    elif args.seeds:
        seeds = list(range(1, int(args.seeds) + 1)) if args.seeds.isdigit() else [int(s) for s in args.seeds.split(",")]
        result = run_seeds(seeds, Path(args.runs_dir).resolve(), out)
    else:
        parser.error("give --seeds, --from-log, --reread, --check or --docs")
    print(markdown(result))
    print(f"written: {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    sys.exit(main())
