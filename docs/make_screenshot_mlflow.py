"""Screenshot of `mlflow ui` for docs/tracking.md: the runs of the repo's default store and their AUC charts.

Run from the repo root after at least one tracked run; the committed image shows these two:

    ARGS="data_dir=data/synthetic/MURA-v1.1 weights=none image_size=32 batch_size=8 trainable_layers=-1 dense_units=[16,8,4]"
    python -m fracture train $ARGS run_name=mlflow-screenshot epochs=2
    python -m fracture train $ARGS run_name=mlflow-screenshot-lr1e-3 epochs=3 learning_rate=1e-3
    python docs/make_screenshot_mlflow.py            # -> docs/img/mlflow_ui.png
    rm -r saved_models/mlflow-screenshot*            # the runs stay in ./mlflow.db

It starts `mlflow ui` exactly as a user would (no arguments, so it reads ./mlflow.db), waits for it,
opens the experiment's runs in headless Chromium (Debian's `chromium`, see `make browser`) with
Playwright, in the chart view (runs list on the left, the AUC charts of every run on the right),
saves the PNG and stops the server.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fracture.testing import free_port  # noqa: E402  (after the path insert)

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def wait_for(url: str, server: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"mlflow ui exited with code {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    sys.exit(f"mlflow ui did not answer {url} within {seconds:.0f} s")


def click_if_present(locator) -> None:
    """Click a UI control that this MLflow version may not have; the screenshot still works without it."""
    try:
        locator.first.click(timeout=5000)
    except Exception:  # playwright's TimeoutError: not in this UI version
        return
    locator.page.wait_for_timeout(1500)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="fracture")
    parser.add_argument("--out", default="docs/img/mlflow_ui.png")
    parser.add_argument("--charts", default="auc", help="metric charts to show (the chart view's search box)")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()

    from mlflow import MlflowClient
    from playwright.sync_api import sync_playwright

    # What `mlflow ui` with no arguments reads in this folder (the same default fracture.tracking uses).
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    client = MlflowClient(f"sqlite:///{Path.cwd() / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        sys.exit(f"no experiment '{args.experiment}' in ./mlflow.db: train a run first (see this file's docstring)")
    runs = client.search_runs([experiment.experiment_id], max_results=1, order_by=["attributes.start_time DESC"])
    if not runs:
        sys.exit(f"experiment '{args.experiment}' has no runs yet")

    port = free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    command = [str(mlflow_bin) if mlflow_bin.exists() else "mlflow", "ui", "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/health", server)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1600, "height": 900}, device_scale_factor=1)
            page.goto(f"{url}/#/experiments/{experiment.experiment_id}/runs", wait_until="domcontentloaded",
                      timeout=120_000)
            page.get_by_text(runs[0].info.run_name, exact=True).first.wait_for(timeout=120_000)
            # MLflow 3 opens in its GenAI layout with an assistant panel: switch to the model-training
            # layout, open the chart view (runs list + one chart per metric) and keep the AUC charts.
            click_if_present(page.get_by_role("button", name="Close"))
            click_if_present(page.get_by_text("Model training", exact=True))
            click_if_present(page.locator("[role=radiogroup] label").nth(1))
            search = page.get_by_placeholder("Search metric charts")
            if args.charts and search.count():
                search.fill(args.charts)
            page.wait_for_timeout(4000)  # charts render after the data arrives
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=args.out)
            browser.close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    print(f"screenshot of {url} (experiment '{args.experiment}'): {args.out}")


if __name__ == "__main__":
    main()
