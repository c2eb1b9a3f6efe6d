"""The upload page in a real browser: headless Debian Chromium driven by Playwright's Python package
(no browser download), against `python -m fracture serve` on a free 127.0.0.1 port.

Skipped, with the reason in pytest's -ra summary, when Playwright or Chromium is missing
(`make browser` installs Chromium where root and apt are available).

    FRACTURE_SCREENSHOTS=docs/img             also saves webapp.png (one image) and webapp_study.png
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
from fracture.cam.draw import ALPHA as OVERLAY_ALPHA  # the weight cam_png is drawn with

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


@pytest.fixture(scope="module")
def study_files(request, xray_file) -> list[Path]:
    """Two views of one study: every image in xray_file's folder, or it and another synthetic image."""
    views = sorted(xray_file.parent.glob("*.png"))
    if len(views) >= 2:
        return views[:3]
    other = sorted(Path(request.getfixturevalue("synth_root")).glob("train/XR_HUMERUS/*/*_negative/*.png"))[0]
    return [xray_file, other]


def open_page(browser, server, **options):
    """A new page on the app with /api/model answered; records outside requests and console errors."""
    page = browser.new_page(**options)
    page.outside, page.console_errors = [], []  # any request leaving 127.0.0.1 (a CDN, a font) fails
    page.on("request", lambda request: page.outside.append(request.url)
            if not request.url.startswith((server, "data:", "blob:")) else None)
    page.on("console", lambda message: page.console_errors.append(message.text)
            if message.type == "error" else None)
    page.goto(server + "/")
    wait_until(page, "() => document.querySelectorAll('#layer option').length > 0")
    return page


def screenshot(page, name: str):
    folder = os.environ.get("FRACTURE_SCREENSHOTS")
    if folder:
        page.evaluate("() => document.activeElement && document.activeElement.blur()")  # no focus ring
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / name), full_page=True)


def test_upload_predict_slide_the_opacity_and_read_the_legend(browser, server, xray_file):  # browser first: skip cheaply
    page = open_page(browser, server, viewport={"width": 1200, "height": 1000})
    assert page.locator("#predict").is_disabled()
    labels = page.eval_on_selector_all("#layer option", "options => options.map(o => [o.value, o.textContent])")
    assert labels[0][0] == "relu" and labels[0][1].startswith("last block (coarse")  # readable, not `relu`
    page.set_input_files("#file", str(xray_file))
    wait_until(page, "() => document.getElementById('preview').naturalWidth > 0")
    page.click("#predict")

    wait_until(page, "() => !document.getElementById('overlay').hidden"
                     " && document.getElementById('overlay').naturalWidth > 0")
    probability = page.text_content("#probability")
    assert probability.endswith("%") and 0 <= float(probability.rstrip(" %")) <= 100, probability
    assert page.text_content("#label").startswith(("Abnormal", "Normal", "Uncertain"))
    assert "threshold" in page.text_content("#verdict-note")
    assert page.text_content("#result-title") == "Result" and page.is_hidden("#images-table")
    assert page.is_visible("#overlay") and page.is_visible("#base") and page.is_hidden("#error")
    assert "last block" in page.text_content("#overlay-caption") and "relu" in page.text_content("#overlay-caption")
    sizes = page.evaluate("['preview', 'base', 'overlay'].map(id => document.getElementById(id).naturalWidth)")
    assert sizes[0] == sizes[1] == sizes[2] > 0  # heatmap at the image's size, laid exactly over it

    # the legend: visible, a gradient from the colormap's colours, low on the left
    assert page.is_visible("#legend-bar")
    gradient = page.eval_on_selector("#legend-bar", "e => getComputedStyle(e).backgroundImage")
    assert gradient.startswith("linear-gradient") and "rgb(0, 0, 128)" in gradient, gradient
    assert page.text_content(".legend-ticks span") == "low"

    # the opacity slider changes the heatmap's opacity in the browser (no request to the server)
    opacity = "() => getComputedStyle(document.getElementById('overlay')).opacity"
    # it starts at the server's overlay weight (sent by /api/model), as cam_png is drawn
    page.wait_for_function(f"() => document.getElementById('opacity').value === '{round(OVERLAY_ALPHA * 100)}'")
    assert float(page.evaluate(opacity)) == pytest.approx(OVERLAY_ALPHA)
    requests_before = len(page.outside)
    page.focus("#opacity")
    page.keyboard.press("End")
    assert page.evaluate(opacity) == "1" and page.text_content("#opacity-value") == "100 %"
    page.keyboard.press("Home")
    assert page.evaluate(opacity) == "0"
    for _ in range(12):  # 5 % steps: back to 60 % for the screenshot
        page.keyboard.press("ArrowRight")
    assert page.evaluate(opacity) == "0.6"
    assert len(page.outside) == requests_before
    screenshot(page, "webapp.png")
    assert not page.outside, f"requests outside the app: {page.outside}"
    assert not page.console_errors, page.console_errors
    page.close()


def test_a_study_upload_shows_each_image_and_the_mean(browser, server, study_files, tmp_path):
    """The study's views plus one unreadable file: it gets its own row and is left out of the mean."""
    bad = tmp_path / "scan-notes.png"
    bad.write_text("not an X-ray")
    page = open_page(browser, server, viewport={"width": 1200, "height": 1000})
    page.set_input_files("#file", [str(path) for path in study_files] + [str(bad)])
    n = len(study_files) + 1
    wait_until(page, f"() => document.querySelectorAll('#file-list li').length === {n}")  # choose() is async
    page.click("#predict")
    wait_until(page, "() => !document.getElementById('result').hidden"
                     " && document.getElementById('overlay').naturalWidth > 0")
    assert page.text_content("#result-title") == f"Study of {n} images"
    rows = page.locator("#images-rows tr")
    assert rows.count() == n
    shown = [float(rows.nth(i).locator("td").nth(1).text_content().rstrip(" %")) for i in range(n - 1)]
    study = float(page.text_content("#probability").rstrip(" %"))
    assert study == pytest.approx(sum(shown) / len(shown), abs=0.101)  # each shown rounded to 0.1: |error| <= 0.05 + 0.05
    assert f"mean of {n - 1} images" in page.text_content("#probability-unit")
    assert rows.nth(n - 1).locator(".label").text_content() == "Unreadable"
    assert "1 unreadable file left out of the mean" in page.text_content("#verdict-note")
    assert page.is_hidden("#error")
    rows.nth(n - 1).click()  # the viewer follows the table, and says why there is no image
    assert "server could not read this file" in page.text_content("#no-preview")
    rows.nth(1).click()
    assert study_files[1].name in page.text_content("#preview-caption")
    assert "current" in rows.nth(1).get_attribute("class")
    wait_until(page, "() => document.getElementById('overlay').naturalWidth > 0"
                     " && !document.getElementById('preview').hidden")
    screenshot(page, "webapp_study.png")
    assert not page.outside and not page.console_errors, (page.outside, page.console_errors)
    page.close()


def test_a_bad_file_shows_the_server_reason_not_a_dicom_hint(browser, server, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("this is not an X-ray")
    page = open_page(browser, server)
    page.set_input_files("#file", str(bad))
    wait_until(page, "() => !document.getElementById('no-preview').hidden"
                     " && document.getElementById('no-preview').textContent.includes('browser')")
    assert "DICOM" not in page.text_content("#no-preview")  # it is no DICOM: promise nothing
    page.click("#predict")
    page.wait_for_selector("#error:not([hidden])", timeout=30_000)
    assert "not a readable image" in page.text_content("#error")
    assert "server could not read this file" in page.text_content("#no-preview")
    assert page.is_hidden("#result")
    page.close()


def test_dicom_gets_the_server_rendering_as_preview(browser, server, xray_file, tmp_path):
    """Browsers cannot show DICOM: the page says so, then shows the server's rendering."""
    import cv2
    import numpy as np

    from tests.images import dicom_bytes

    dicom = tmp_path / "xray.dcm"
    dicom.write_bytes(dicom_bytes(cv2.imread(str(xray_file), cv2.IMREAD_GRAYSCALE).astype(np.uint16) * 16))
    page = open_page(browser, server)
    page.set_input_files("#file", str(dicom))
    wait_until(page, "() => !document.getElementById('no-preview').hidden"
                     " && document.getElementById('no-preview').textContent.includes('DICOM')")
    page.click("#predict")
    wait_until(page, "() => document.getElementById('preview').naturalWidth > 0"
                     " && document.getElementById('overlay').naturalWidth > 0")
    assert page.evaluate("() => document.getElementById('preview').src.startsWith('data:image/png')")
    assert page.is_visible("#preview") and page.is_hidden("#no-preview")
    page.close()
