"""The per-run report: every section that has data shows it, the file is self-contained, and it
reads in a real browser (headless Chromium, as tests/test_browser.py drives it)."""

import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

import fracture as fr
from fracture import report

pytestmark = pytest.mark.slow  # CAM panels and overlays on the tiny run


class Sections(HTMLParser):
    """Per <section id>: the images (data: sources), table body rows, definition values and
    'missing' notes it holds, and every src/href in the document. Independent of fracture.report."""

    def __init__(self):
        super().__init__()
        self.found, self.links, self.current, self.in_tbody = {}, [], None, False
        self.ids = {}  # element id -> the section holding it (None outside sections)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("src", "href"):
            if key in attrs:
                self.links.append(attrs[key])
        if "id" in attrs and tag != "section":
            self.ids[attrs["id"]] = self.current
        if tag == "section":
            self.current = attrs["id"]
            self.found[self.current] = {"img": 0, "row": 0, "dd": 0, "text": 0, "missing": 0,
                                        "has_data": attrs.get("data-has-data")}
        elif self.current:
            counts = self.found[self.current]
            if tag == "img" and attrs.get("src", "").startswith("data:image/png;base64,"):
                counts["img"] += 1
            elif tag == "tbody":
                self.in_tbody = True
            elif tag == "tr" and self.in_tbody:
                counts["row"] += 1
            elif tag == "dd":
                counts["dd"] += 1
            elif tag == "p" and report.MISSING_CLASS in (attrs.get("class") or "").split():
                counts["missing"] += 1
            elif tag in ("li", "p") and "claim" not in (attrs.get("class") or ""):
                counts["text"] += 1  # prose: a paragraph or list item that is not a missing-note

    def handle_endtag(self, tag):
        if tag == "tbody":
            self.in_tbody = False
        elif tag == "section":
            self.current = None


def parse(text: str) -> Sections:
    parser = Sections()
    parser.feed(text)
    return parser


def expected_content(run_dir: Path, cam_out: Path) -> dict[str, str]:
    """Section -> the kind of content its source files call for, read from the run folder itself."""
    return {
        "data": "row",  # the dataset is readable: counts and the leakage table
        "reference": "any",
        "model": "row",  # the preprocessing layers
        "training": "img" if (run_dir / "plots" / "curves.png").is_file() else "row",
        "evaluation": "img" if (run_dir / "plots" / "test" / "roc.png").is_file() else "row",
        "failures": "row" if (run_dir / "predictions_test.csv").is_file() else "none",
        "explainability": "img" if list((cam_out / run_dir.name).glob("*/panel.png")) else "none",
        "intended-use": "any",
        "reproducibility": "row",
    }


def empty_sections(text: str, expected: dict[str, str]) -> list[str]:
    found = parse(text).found
    empty = [s for s in expected if s not in found]
    for section, kind in expected.items():
        counts = found.get(section)
        if counts is None or kind == "none":
            continue
        content = counts["img"] + counts["row"] + counts["dd"] + counts["text"]
        if (kind == "any" and content == 0) or (kind in ("img", "row") and counts[kind] == 0):
            empty.append(section)
    return empty


@pytest.fixture(scope="module")
def reported(trained_run, tmp_path_factory):
    """A copy of the tiny run with one CAM panel, and its report."""
    tmp = tmp_path_factory.mktemp("report")
    run_dir = tmp / trained_run.name
    shutil.copytree(trained_run, run_dir)
    run = fr.load_run(run_dir)
    from fracture.cam import render
    from fracture.cam.draw import default_images

    render(run, default_images(run, 1), ["relu"], ["gradcam"], out_dir=tmp / "layer_outputs", dpi=60)
    path = report.write_report(run, cam_out=tmp / "layer_outputs", failures=2)
    return run, path, tmp / "layer_outputs"


def test_every_section_with_data_shows_it(reported):
    run, path, cam_out = reported
    text = path.read_text()
    expected = expected_content(run.path, cam_out)
    assert empty_sections(text, expected) == []
    found = parse(text).found
    assert list(found) == list(expected)  # CLAIM order, nothing dropped
    assert all(found[s]["has_data"] == "true" for s, kind in expected.items() if kind != "none")
    assert found["explainability"]["missing"] == 2  # no sanity check, no localization scores: said so
    # Parsed, not a substring: the HTML may quote its attributes either way.
    assert parse(text).ids.get("synthetic-warning") == "intended-use" and "not a medical device" in text
    assert f"{run.threshold:.3f}" in text and run.config.backbone in text


def test_the_checker_fails_on_an_emptied_section(reported, monkeypatch):
    """The test above must fail when a builder drops its content: empty the training section."""
    run, _, cam_out = reported
    monkeypatch.setattr(report, "training_section",
                        lambda run: report.Section("training", "Training", "", "<dl></dl>", True))
    text = report.render(run, report.sections(run, cam_out))
    assert empty_sections(text, expected_content(run.path, cam_out)) == ["training"]


def test_report_is_self_contained(reported):
    _, path, _ = reported
    links = parse(path.read_text()).links
    assert links and all(link.startswith(("data:image/png;base64,", "#")) for link in links), \
        [link[:60] for link in links if not link.startswith(("data:", "#"))]


def test_report_cli_and_the_web_app_link(reported, capsys):
    from fracture.app import create_app
    from fracture.cli import main

    run, path, cam_out = reported
    path.unlink()
    assert main(["report", "--run", str(run.path), "--cam-out", str(cam_out), "--failures", "1"]) == 0
    assert path.is_file() and str(path) in capsys.readouterr().out
    client = create_app(run=run, warm_up=False).test_client()
    assert client.get("/api/model").get_json()["report"] == "report"
    answer = client.get("/report")
    assert answer.status_code == 200 and answer.data == path.read_bytes()
    assert "img-src data:" in answer.headers["Content-Security-Policy"]
    path.unlink()
    assert "report" not in client.get("/api/model").get_json() and client.get("/report").status_code == 404


@pytest.mark.browser
def test_report_renders_in_chromium(reported, tmp_path):
    """Every figure decodes, every section is laid out, nothing is fetched; screenshot saved
    (FRACTURE_SCREENSHOTS=folder keeps report.png there)."""
    import os

    from tests.test_browser import CHROMIUM_FLAGS, chromium_path

    executable = chromium_path()
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
    run, path, _ = reported
    report.write_report(run, cam_out=reported[2], failures=2)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            requests = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(path.as_uri())
            page.wait_for_load_state("load")
            images = page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
            assert images and all(done and width > 0 for done, width in images)
            heights = page.evaluate("Array.from(document.querySelectorAll('section'))"
                                    ".map(s => [s.id, s.getBoundingClientRect().height])")
            assert len(heights) == 9 and all(h > 60 for _, h in heights), heights
            assert all(url.startswith(("file:", "data:")) for url in requests), requests
            # nothing widens the page past a narrow window (a wide table scrolls in its own box)
            page.set_viewport_size({"width": 700, "height": 900})
            widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
            assert widths[0] <= widths[1], widths
            page.set_viewport_size({"width": 1100, "height": 900})
            folder = Path(os.environ.get("FRACTURE_SCREENSHOTS") or tmp_path)
            folder.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(folder / "report.png"), full_page=True)
            assert (folder / "report.png").stat().st_size > 10_000
        finally:
            browser.close()
