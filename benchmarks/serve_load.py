"""Load check of the web app under gunicorn: latency of predict and predict+CAM, one client and many.

    python benchmarks/serve_load.py                      # newest run if it is 224 px, else an untrained one
    python benchmarks/serve_load.py --run saved_models/<run> --clients 8 --requests 50

Starts `gunicorn -w 1 --threads 4 'fracture.app:create_app()'` on a free 127.0.0.1 port (every
request goes to 127.0.0.1), then for each mode (predict, predict+CAM): `--single` sequential
requests from one client, then `--clients` concurrent clients x `--requests` requests each. A
total `--time-limit` stops the clients early (reported). Any non-200 answer, transport error or
probability that differs from the first answer counts as an error; the script exits 1 on errors.

Without --run it uses the newest run in saved_models/ when that run is at --size px; otherwise it
saves an untrained DenseNet121 (weights=none) at --size px to a temporary run folder and says so.
Latency does not depend on the weights' values, so that is an honest latency measurement (not an
accuracy one). Results go in docs/benchmarks.md, section "Web app latency".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fracture.testing import free_port, stop_server, wait_until_healthy  # noqa: E402  (after the path insert)
from fracture.errors import FractureError  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", help="run folder (default: newest in saved_models/ if at --size px, else untrained)")
    p.add_argument("--size", type=int, default=224, help="input size when no suitable run exists (default 224)")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients")
    p.add_argument("--requests", type=int, default=50, help="requests per concurrent client and mode")
    p.add_argument("--single", type=int, default=40, help="sequential single-client requests per mode")
    p.add_argument("--threads", type=int, default=4, help="gunicorn --threads")
    p.add_argument("--time-limit", type=float, default=600, help="seconds for all the measuring (clients stop)")
    p.add_argument("--layer", default="", help="CAM layer (default: the app's default)")
    p.add_argument("--image", help="image to send (default: a synthetic X-ray)")
    p.add_argument("--json", help="also write the results to this JSON file")
    return p.parse_args(argv)


# --------------------------------------------------------------------------------------------
# set-up: a run, an image, a gunicorn server
# --------------------------------------------------------------------------------------------
def resolve_run(args, tmp: Path) -> tuple[Path, str]:
    """(run folder, how it was chosen)."""
    from fracture import config as config_lib
    from fracture.errors import FractureError
    from fracture.runs import find_run

    if args.run:
        path = find_run(args.run)
        size = config_lib.load(path / "config.yaml", stored=True).image_size
        return path, f"--run {path} ({size} px)"
    try:
        newest = find_run(None, "saved_models")
        size = config_lib.load(newest / "config.yaml", stored=True).image_size
        if size == args.size:
            return newest, f"newest run {newest} ({size} px)"
        reason = f"the newest run {newest.name} is {size} px, not {args.size}"
    except FractureError:
        reason = "no run in saved_models/"
    return untrained_run(args.size, tmp), (f"{reason}: an untrained DenseNet121 (weights=none) at {args.size} px "
                                           "saved to a temporary run (latency only; the weights' values do not matter)")


def untrained_run(size: int, tmp: Path) -> Path:
    import fracture as fr
    from fracture.model import build_model

    cfg = fr.load_config(overrides=dict(weights="none", image_size=size, run_name="untrained", mlflow=False),
                         frozen_random_backbone=True)  # latency only
    path = tmp / "untrained"
    path.mkdir(parents=True)
    cfg.to_yaml(path / "config.yaml")
    build_model(cfg).save(path / "model.keras")
    return path


def synthetic_xray(tmp: Path) -> Path:
    """A positive synthetic X-ray: from data/synthetic when generated, else a fresh tiny tree."""
    found = sorted((ROOT / "data/synthetic/MURA-v1.1").glob("train/XR_HUMERUS/*/*_positive/*.png"))
    if not found:
        import fracture as fr

        root = fr.generate_synthetic(tmp / "synth", patients=4, seed=0)
        found = sorted(Path(root).glob("*/XR_HUMERUS/*/*_positive/*.png")) or sorted(Path(root).rglob("*.png"))
    return found[0]


def start_gunicorn(run: Path, threads: int, log_path: Path) -> tuple[subprocess.Popen, str, float]:
    port = free_port()
    gunicorn = shutil.which("gunicorn", path=str(Path(sys.executable).parent)) or shutil.which("gunicorn")
    command = [gunicorn or sys.executable, *([] if gunicorn else ["-m", "gunicorn"]),
               "-w", "1", "--threads", str(threads), "--timeout", "300", "-b", f"127.0.0.1:{port}",
               "fracture.app:create_app()"]
    env = {**os.environ, "FRACTURE_RUN": str(run), "TF_CPP_MIN_LOG_LEVEL": "2"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        return process, url, wait_until_healthy(process, url, 600, log_path)
    except FractureError as exc:
        stop_server(process)
        sys.exit(f"gunicorn: {exc}")


# --------------------------------------------------------------------------------------------
# clients
# --------------------------------------------------------------------------------------------
BOUNDARY = "serve-load-boundary"


def multipart(data: bytes, filename: str) -> bytes:
    return (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()


class Target:
    def __init__(self, url: str, body: bytes, query: str):
        self.url, self.body, self.query = url, body, query
        self.reference = None  # the first probability; every later answer must match it
        self.lock = threading.Lock()

    def call(self) -> tuple[float, float | None, str | None]:
        """(client-side seconds, server elapsed_ms, error or None)."""
        request = urllib.request.Request(self.url + "/api/predict" + self.query, data=self.body, method="POST",
                                         headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return time.perf_counter() - started, None, f"HTTP {exc.code}: {exc.read()[:200]!r}"
        except (OSError, ValueError) as exc:
            return time.perf_counter() - started, None, f"{type(exc).__name__}: {exc}"
        seconds = time.perf_counter() - started
        with self.lock:
            if self.reference is None:
                self.reference = answer["probability"]
        if ("cam=1" in self.query) != bool(answer.get("cam_png")):
            return seconds, answer["elapsed_ms"], "CAM missing or unexpected"
        if abs(answer["probability"] - self.reference) > 1e-6:
            return seconds, answer["elapsed_ms"], f"probability {answer['probability']} != {self.reference}"
        return seconds, answer["elapsed_ms"], None


def cpu_seconds(master_pid: int) -> float | None:
    """CPU time (user + system) used so far by gunicorn's worker(s), from /proc (Linux only).
    Per request it is a cost that, unlike latency, hardly depends on what else the machine runs."""
    try:
        children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
        total = 0
        for pid in children:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
        return total / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def measure(target: Target, clients: int, per_client: int, deadline: float, master_pid: int) -> dict:
    results, lock = [], threading.Lock()

    def client():
        for _ in range(per_client):
            if time.perf_counter() > deadline:
                return
            outcome = target.call()
            with lock:
                results.append(outcome)

    cpu_before = cpu_seconds(master_pid)
    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    cpu_after = cpu_seconds(master_pid)
    cpu_ms = (1000 * (cpu_after - cpu_before) / len(results)
              if results and cpu_before is not None and cpu_after is not None else None)
    ok = [r for r in results if r[2] is None]
    errors = [r[2] for r in results if r[2] is not None]
    latencies = sorted(1000 * r[0] for r in ok)
    server = sorted(r[1] for r in ok)
    return dict(clients=clients, planned=clients * per_client, done=len(results), errors=len(errors),
                first_errors=errors[:3], p50_ms=percentile(latencies, 50), p95_ms=percentile(latencies, 95),
                max_ms=max(latencies) if latencies else None, server_p50_ms=percentile(server, 50),
                throughput_rps=len(ok) / wall if wall else 0.0, wall_s=wall, cpu_ms_per_request=cpu_ms)


def percentile(values, q):
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def cpu_summary() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPU cores ({model}), Python {platform.python_version()}"


def load_average() -> str:
    try:
        return "/".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory(prefix="serve_load_") as tmp:
        tmp = Path(tmp)
        run, how = resolve_run(args, tmp)
        image = Path(args.image) if args.image else synthetic_xray(tmp)
        body = multipart(image.read_bytes(), image.name)
        print(f"run: {how}")
        print(f"image: {image} ({len(body) / 1024:.0f} kB request)")
        print(f"machine: {cpu_summary()}; load average before start {load_average()}")
        process, url, boot = start_gunicorn(run, args.threads, tmp / "gunicorn.log")
        print(f"gunicorn -w 1 --threads {args.threads} on {url}: ready in {boot:.1f} s (model load + warm-up)")
        rows = []
        try:
            deadline = time.perf_counter() + args.time_limit
            layer = f"&layer={args.layer}" if args.layer else ""
            for mode, query in (("predict", ""), ("predict+CAM", f"?cam=1{layer}")):
                target = Target(url, body, query)
                for _ in range(3):  # settle: first connections, caches
                    target.call()
                for clients, per_client in ((1, args.single), (args.clients, args.requests)):
                    row = measure(target, clients, per_client, deadline, process.pid)
                    rows.append(dict(mode=mode, **row))
                    print(format_row(rows[-1]), flush=True)
        finally:
            stop_server(process)
        print(f"load average after: {load_average()}")
        print()
        print(markdown(rows))
        stopped = [r for r in rows if r["done"] < r["planned"]]
        if stopped:
            print(f"\nthe {args.time_limit:g} s time limit stopped {len(stopped)} phase(s) early")
        if args.json:
            Path(args.json).write_text(json.dumps(dict(run=how, machine=cpu_summary(), rows=rows), indent=2))
        errors = sum(r["errors"] for r in rows)
        print(f"\nerrors: {errors}")
        return 1 if errors else 0


def fmt(value, spec=".0f"):
    return "-" if value is None else format(value, spec)


def format_row(r) -> str:
    return (f"{r['mode']:12s} {r['clients']:2d} client(s): {r['done']}/{r['planned']} requests, "
            f"{r['errors']} errors, p50 {fmt(r['p50_ms'])} ms, p95 {fmt(r['p95_ms'])} ms, "
            f"{r['throughput_rps']:.1f} req/s, worker CPU {fmt(r['cpu_ms_per_request'])} ms/request"
            + (f"  first errors: {r['first_errors']}" if r["errors"] else ""))


def markdown(rows) -> str:
    lines = ["| mode | clients | requests | errors | p50 ms | p95 ms | max ms | server p50 ms | req/s "
             "| worker CPU ms/request |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['clients']} | {r['done']}/{r['planned']} | {r['errors']} | "
                     f"{fmt(r['p50_ms'])} | {fmt(r['p95_ms'])} | {fmt(r['max_ms'])} | {fmt(r['server_p50_ms'])} | "
                     f"{r['throughput_rps']:.1f} | {fmt(r['cpu_ms_per_request'])} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
