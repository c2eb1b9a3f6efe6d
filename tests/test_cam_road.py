"""ROAD (fracture/cam/road.py): the imputation against pytorch-grad-cam's NoisyLinearImputer,
the removal masks against its percentile masks, the measure on the planted-signal net, and the
columns of cam_eval.csv."""

import numpy as np
import pytest

from fracture import cam
from fracture.cam import road
from tests.conftest import positives
from tests.test_cam_reference import grad_cam_library


def library_imputation(image, removed):
    """pytorch-grad-cam's imputer without noise; its mask is 1 where a pixel is kept."""
    import torch

    grad_cam_library()
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    filled = NoisyLinearImputer(noise=0.0)(torch.tensor(image[None], dtype=torch.float32),
                                           torch.tensor((~removed).astype(np.float32)))
    return filled.numpy()[0]


def uniform_neighbours():
    """A broken imputer: all 8 neighbours weighted alike."""
    return [(offset, 1 / 8) for offset, _ in road.NEIGHBOURS]


@pytest.mark.parametrize("broken", [False, pytest.param(True, marks=pytest.mark.xfail(
    raises=AssertionError, strict=True, reason="a mutated imputer must fail the comparison"))], ids=["ok", "broken"])
def test_imputation_equals_pytorch_grad_cam(broken, monkeypatch):
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, (24, 20))
    removed = rng.random((24, 20)) < 0.4
    removed[5:15, 3:12] = True  # a large hole too, and the border rows
    removed[0], removed[:, -1] = True, True
    if broken:
        monkeypatch.setattr(road, "NEIGHBOURS", uniform_neighbours())
    got = road.linear_imputation(image, removed)
    want = library_imputation(image, removed)
    np.testing.assert_allclose(got, want, atol=1e-3)  # the same system; theirs returns float32
    np.testing.assert_array_equal(got[~removed], image[~removed])


def test_removal_masks_count_ties_and_match_the_percentile_rule():
    rng = np.random.default_rng(1)
    heatmap = rng.random((10, 10))  # no ties
    for k in road.ROAD_PERCENTS:
        most = road.removal_mask(heatmap, k, True, rng)
        least = road.removal_mask(heatmap, k, False, rng)
        assert most.sum() == least.sum() == k
        # pytorch-grad-cam: ROADMostRelevantFirst(p) keeps cam < percentile(cam, p), p = 100 - k
        np.testing.assert_array_equal(most, ~(heatmap < np.percentile(heatmap, 100 - k)))
        np.testing.assert_array_equal(least, heatmap < np.percentile(heatmap, k))
    flat = np.zeros((10, 10))  # all tied: k % removed, at random places
    a, b = road.removal_mask(flat, 30, True, rng), road.removal_mask(flat, 30, True, rng)
    assert a.sum() == b.sum() == 30 and (a != b).any()


def test_road_ranks_a_good_map_above_a_random_one(planted):  # noqa: F811
    """On the planted patch, removing Grad-CAM's top pixels removes the patch: p(fracture) drops
    (MoRF) far more than with a random map, and keeping its top pixels (LeRF) keeps p high."""
    model, x, _ = positives(planted)
    good = cam.cam_maps(model, x, ["inner"], "gradcam")["inner"]
    noise = np.random.default_rng(0).random(good.shape).astype(np.float32)
    morf, lerf = road.road_scores(model, x, good)
    morf_random, lerf_random = road.road_scores(model, x, noise)
    assert morf.shape == lerf.shape == (len(x), len(road.ROAD_PERCENTS))
    assert morf.mean() < morf_random.mean() - 0.2 and lerf.mean() > morf.mean() + 0.3
    assert road.road_row(morf, lerf)["road_combined"] > road.road_row(morf_random, lerf_random)["road_combined"]
    inverted_morf, _ = road.road_scores(model, x, 1 - good)
    assert inverted_morf.mean() > morf.mean() + 0.2


def test_evaluate_adds_road_and_one_pixels_row_per_input_method(run_copy):  # noqa: F811
    table = cam.evaluate_localization(run_copy, ["gradcam", "saliency"], ["relu", "pool4_relu"], limit=2,
                                      steps=2, road_images=1)
    assert list(table.columns) == cam.EVAL_COLUMNS and set(road.ROAD_COLUMNS) <= set(table.columns)
    assert list(zip(table["method"], table["layer"])) == [
        ("gradcam", "relu"), ("gradcam", "pool4_relu"), ("saliency", "pixels"), ("random_pixel", "-"),
        ("random_grid", "relu"), ("random_grid", "pool4_relu")]
    scores = table[road.ROAD_COLUMNS[:-2]].to_numpy()
    assert np.isfinite(scores).all() and (scores >= 0).all() and (scores <= 1).all()
    assert (table["road_n_images"] == 1).all() and (table["n_images"] == 2).all()
