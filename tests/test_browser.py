"""The upload page in a real browser: headless Debian Chromium driven by Playwright's Python package
(no browser download), against `python -m fracture serve` on a free 127.0.0.1 port.

Skipped, with the reason in pytest's -ra summary, when Playwright or Chromium is missing
(`make browser` installs Chromium where root and apt are available).

    FRACTURE_SCREENSHOT=docs/img/webapp.png  also saves a screenshot of the answered page
    FRACTURE_BROWSER_RUN=saved_models/<run>  serves that run instead of the tiny test run
    FRACTURE_BROWSER_IMAGE=path/to/xray.png   uploads that image instead of a small synthetic one
"""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fracture.testing import free_port, stop_server, wait_until_healthy
from fracture.errors import FractureError

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # a server subprocess that loads and warms up a model

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
START_TIMEOUT = 240  # seconds for the server to load and warm up the model on a busy 2-core CPU


def chromium_path() -> str:
    path = os.environ.get("FRACTURE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path or not os.access(path, os.X_OK):
        pytest.skip(f"chromium not installed{f' at FRACTURE_CHROMIUM={path}' if path else ''}: run `make browser` "
                    "(apt-get install chromium, needs root), or set FRACTURE_CHROMIUM=/path/to/chromium")
    return path


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    """`python -m fracture serve` in a subprocess; yields its base URL, stops it afterwards."""
    run = os.environ.get("FRACTURE_BROWSER_RUN") or str(request.getfixturevalue("trained_run"))
    port = free_port()
    log_file = tmp_path_factory.mktemp("server") / "server.log"
    with open(log_file, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "fracture", "serve", "--run", run,
                                    "--host", "127.0.0.1", "--port", str(port)],
                                   stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_until_healthy(process, url, START_TIMEOUT, log_file)
        except FractureError as exc:
            pytest.fail(str(exc))
        yield url
    finally:
        stop_server(process, timeout=20)


@pytest.fixture(scope="module")
def browser():
    executable = chromium_path()
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_FLAGS)
        yield launched
        launched.close()


def wait_until(page, predicate: str, timeout: float = 60.0):
    """Poll a JS arrow function until it returns true. (page.wait_for_function evaluates a string
    inside the page, which the app's Content-Security-Policy rightly forbids; evaluate() does not.)"""
    deadline = time.monotonic() + timeout
    while not page.evaluate(predicate):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {predicate}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def xray_file(request) -> Path:
    """A synthetic humerus X-ray with a fracture (the generator's positive study)."""
    if os.environ.get("FRACTURE_BROWSER_IMAGE"):
        return Path(os.environ["FRACTURE_BROWSER_IMAGE"])
    return sorted(Path(request.getfixturevalue("synth_root")).glob("train/XR_HUMERUS/*/*_positive/*.png"))[0]


def test_upload_predict_and_see_the_overlay(browser, server, xray_file):  # browser first: skip cheaply
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    outside = []  # any request leaving 127.0.0.1 (a CDN, a font) fails the test
    page.on("request", lambda request: outside.append(request.url)
            if not request.url.startswith((server, "data:", "blob:")) else None)
    console_errors = []
    page.on("console", lambda message: console_errors.append(message.text) if message.type == "error" else None)

    page.goto(server + "/")
    wait_until(page, "() => document.querySelectorAll('#layer option').length > 0")  # /api/model answered
    assert page.locator("#predict").is_disabled()
    page.set_input_files("#file", str(xray_file))
    wait_until(page, "() => document.getElementById('preview').naturalWidth > 0")
    page.select_option("#layer", index=0)
    page.click("#predict")

    wait_until(page, "() => !document.getElementById('overlay').hidden"
                     " && document.getElementById('overlay').naturalWidth > 0")
    probability = page.text_content("#probability")
    assert probability.endswith("%") and 0 <= float(probability.rstrip(" %")) <= 100, probability
    assert page.text_content("#label").startswith(("Abnormal", "Normal"))
    assert page.text_content("#run")
    assert page.is_visible("#overlay") and page.is_hidden("#error")
    layer = page.eval_on_selector("#layer", "s => s.value")
    assert layer in page.text_content("#overlay-caption")
    sizes = page.evaluate("['preview', 'overlay'].map(id => document.getElementById(id).naturalWidth)")
    assert sizes[0] == sizes[1] > 0  # overlay at the uploaded image's size

    screenshot = os.environ.get("FRACTURE_SCREENSHOT")
    if screenshot:
        Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=screenshot, full_page=True)
    assert not outside, f"requests outside the app: {outside}"
    assert not console_errors, console_errors
    page.close()


def test_a_bad_file_shows_the_server_reason(browser, server, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("this is not an X-ray")
    page = browser.new_page()
    page.goto(server + "/")
    wait_until(page, "() => document.querySelectorAll('#layer option').length > 0")
    page.set_input_files("#file", str(bad))
    page.click("#predict")
    page.wait_for_selector("#error:not([hidden])", timeout=30_000)
    assert "not a readable image" in page.text_content("#error")
    assert page.is_hidden("#result")
    page.close()


def test_dicom_gets_the_server_rendering_as_preview(browser, server, xray_file, tmp_path):
    """Browsers cannot show DICOM: the page asks the server for its rendering (image=1)."""
    import cv2
    import numpy as np

    from tests.images import dicom_bytes

    dicom = tmp_path / "xray.dcm"
    dicom.write_bytes(dicom_bytes(cv2.imread(str(xray_file), cv2.IMREAD_GRAYSCALE).astype(np.uint16) * 16))
    page = browser.new_page()
    page.goto(server + "/")
    wait_until(page, "() => document.querySelectorAll('#layer option').length > 0")
    page.set_input_files("#file", str(dicom))
    wait_until(page, "() => document.getElementById('preview').dataset.failed === '1'")
    assert "DICOM" in page.text_content("#no-preview")
    page.click("#predict")
    wait_until(page, "() => document.getElementById('preview').naturalWidth > 0"
                     " && document.getElementById('overlay').naturalWidth > 0")
    assert page.evaluate("() => document.getElementById('preview').src.startsWith('data:image/png')")
    assert page.is_visible("#preview") and page.is_hidden("#no-preview")
    page.close()
