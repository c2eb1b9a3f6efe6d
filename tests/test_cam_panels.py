"""Panels with many methods: the default subset, "all" split into one page per layer, empty
cells for input-space methods on layer rows, and the note that explains the peak numbers."""

import numpy as np
import pytest

from fracture import cam
from fracture.cam.draw import PANEL_COLUMNS, PEAK_NOTE, _pages
from fracture.errors import FractureError


def test_method_groups_expand():
    assert cam.check_methods("all") == list(cam.METHODS)
    assert cam.check_methods(["default", "gradcam", "scorecam"]) == [*cam.DEFAULT_METHODS, "scorecam"]
    assert len(cam.DEFAULT_METHODS) <= cam.draw.PANEL_METHODS
    with pytest.raises(FractureError, match=r"\(or all, default\)"):
        cam.check_methods("everything")


def test_few_methods_share_one_panel_and_all_get_a_page_per_layer():
    assert _pages(["gradcam", "intgrad"], ["relu", "pool4_relu"]) == [
        ("panel", {"gradcam": ["relu", "pool4_relu"], "intgrad": ["pixels"]})]
    pages = _pages(list(cam.METHODS), ["relu", "pool4_relu"])
    assert [name for name, _ in pages] == ["panel__relu", "panel__pool4_relu", "panel__pixels"]
    assert list(pages[0][1]) == list(cam.LAYER_METHODS) and list(pages[2][1]) == list(cam.INPUT_METHODS)


def test_panel_leaves_cells_of_methods_without_that_layer_empty_and_explains_peaks():
    gray = np.full((30, 30), 90, np.uint8)
    m = np.random.default_rng(0).random((4, 4))
    maps = {"gradcam": {"relu": m, "pool4_relu": m}, "intgrad": {"pixels": m}}
    peaks = {"gradcam": {"relu": 0.4, "pool4_relu": 0.0}, "intgrad": {"pixels": 2.0}}
    fig = cam.cam_panel(gray, maps, 0.9, 0.5, peaks=peaks)
    tiles = fig.axes[1:-1]
    assert len(tiles) == 3  # 3 rows x 2 columns, 3 cells used
    assert [ax.get_title() for ax in tiles] == ["gradcam", "", "intgrad"]
    assert [ax.get_ylabel() for ax in tiles] == ["relu", "pool4_relu", "pixels"]
    texts = [t.get_text() for ax in tiles for t in ax.texts]
    assert texts == ["peak 0.4", "map is 0: no positive evidence", "peak 2"]
    assert fig.get_supxlabel().replace("\n", " ") == PEAK_NOTE


def test_a_page_of_many_methods_wraps_into_rows():
    gray = np.full((30, 30), 90, np.uint8)
    methods = list(cam.LAYER_METHODS)
    maps = {m: {"relu": np.zeros((4, 4))} for m in methods}
    fig = cam.cam_panel(gray, maps, 0.2, 0.5, columns=PANEL_COLUMNS)
    tiles = fig.axes[1:-1]
    assert [ax.get_title() for ax in tiles] == methods  # every tile names its method
    rows = -(-len(methods) // PANEL_COLUMNS)
    assert sum(ax.get_ylabel() == "relu" for ax in tiles) == rows  # the layer at the start of each row
