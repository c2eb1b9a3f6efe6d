"""CAMs: method x layer x batch size on a tiny conv net trained on a planted signal (on every
backend), exact gradients on its last layer, DenseNet121 inner layers, the localization and
faithfulness measures, overlays, grids, panels and the CLI verb."""

import dataclasses
import re
import shutil
import sys
import types
from pathlib import Path

import keras
import numpy as np
import pytest

from fracture import cam
from fracture.errors import FractureError
from fracture.scores import probability
from tests.conftest import SIZE, lock_holder, positives, tiny_model

BACKEND = keras.backend.backend()  # in every backend test's id, so the output shows which ran

# early: full resolution; inner: inside a residual block (its input also feeds the skip path,
# like DenseNet's conv3_block2_1_relu); last: the layer before global pooling (8x8).
LAYERS = ["early", "inner", "last"]
# Layer methods on every layer; an input-space method has no layer (one case each).
METHOD_LAYERS = [(m, layer) for m in cam.LAYER_METHODS for layer in LAYERS] + [(m, "last") for m in cam.INPUT_METHODS]


# --------------------------------------------------------------------------------------------
# every method x layer x batch size, on every backend
# --------------------------------------------------------------------------------------------
@pytest.mark.backend
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("method,layer", METHOD_LAYERS)
@pytest.mark.parametrize("backend", [BACKEND])
def test_maps_shape_range_and_target(planted, backend, method, layer, batch):
    model, x, _, _ = planted
    images = x[:batch]
    fracture = cam.cam_maps(model, images, [layer], method)[layer]
    normal = cam.cam_maps(model, images, layer, method, target="normal")[layer]
    raw = cam.cam_maps(model, images.astype(np.uint8), [layer], method, normalize=False)[layer]
    for maps in (fracture, normal, raw):
        assert maps.shape == (batch, SIZE, SIZE) and maps.dtype == np.float32
        assert np.isfinite(maps).all()
    assert fracture.min() >= 0 and fracture.max() <= 1 and raw.min() >= 0
    np.testing.assert_allclose(cam.normalize_maps(raw), fracture, atol=1e-4)  # uint8 input = float input
    if method in cam.CLASS_AGNOSTIC:  # |gradient| and the activations' component ignore the sign
        np.testing.assert_allclose(fracture, normal, atol=1e-5)
    else:
        assert not np.allclose(fracture, normal, atol=1e-3), "fracture and normal maps should differ"


@pytest.mark.backend
@pytest.mark.parametrize("method,layer", METHOD_LAYERS)
@pytest.mark.parametrize("backend", [BACKEND])
def test_planted_patch_is_found(planted, backend, method, layer):
    """The map's maximum lands on the bright patch in every positive image (within one cell of
    the layer's grid, since a coarse map is upsampled)."""
    model, x, boxes = positives(planted)
    maps = cam.cam_maps(model, x, [layer], method)[layer]
    cell = SIZE // cam.layer_maps(model, x[:1], layer, method).shape[1]
    for m, (x0, y0, x1, y1) in zip(maps, boxes):
        r, c = np.unravel_index(m.argmax(), m.shape)
        assert x0 - cell <= c < x1 + cell and y0 - cell <= r < y1 + cell, \
            f"{method}/{layer}: peak at (x={c}, y={r}), patch at x {x0}..{x1 - 1}, y {y0}..{y1 - 1}"


@pytest.mark.backend
@pytest.mark.parametrize("backend", [BACKEND])
def test_last_layer_maps_equal_the_closed_form(planted, backend):
    """After `last` come global average pooling and Dense(1): dlogit/dA[i, j, c] = w_c / (h w)
    everywhere, so every gradient method has a closed form to compare against."""
    model, x, _, _ = planted
    a = keras.ops.convert_to_numpy(keras.Model(model.input, model.get_layer("last").output)(x, training=False))
    w = keras.ops.convert_to_numpy(model.get_layer("logit").kernel)[:, 0]
    hw = a.shape[1] * a.shape[2]
    g = w / hw
    s = a.sum(axis=(1, 2))  # (B, C)
    plus = np.where(g > 0, hw * g * g * g / (2 * g * g + s * g ** 3), 0.0)  # Grad-CAM++: sum_hw relu(G) alpha
    expected = {
        "gradcam": a @ g, "hirescam": a @ g, "layercam": a @ np.maximum(g, 0),
        "gradcampp": np.einsum("bhwc,bc->bhw", a, plus),
    }
    for method, want in expected.items():
        got = cam.layer_maps(model, x, "last", method)
        np.testing.assert_allclose(got, np.maximum(want, 0), rtol=1e-3, atol=1e-6, err_msg=method)
    np.testing.assert_allclose(cam.layer_maps(model, x, "last", "gradcam", target="normal"),
                               np.maximum(-(a @ g), 0), rtol=1e-3, atol=1e-6)


def reference_gradcam(model, x, layer, sign):
    """Grad-CAM written out here, apart from fracture.cam: eager autodiff of sign * logit with
    respect to the layer's activation (activation model + head), channel weights = the
    gradients' spatial mean. Returns (maps (B, h, w) after the ReLU, logits (B,))."""
    activation = model.get_layer(layer).output
    activation_model = keras.Model(model.input, activation)
    head = keras.Model([model.input, activation], model.get_layer("logit").output)
    x = keras.ops.convert_to_tensor(x)
    a = activation_model(x, training=False)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:  # the score too: the tape records only what runs inside it
            tape.watch(a)
            logits = head([x, a], training=False)
            score = sign * tf.reduce_sum(logits)
        g = tape.gradient(score, a)
    elif BACKEND == "jax":
        import jax

        def score(act):
            out = head([x, act], training=False)
            return sign * out.sum(), out

        g, logits = jax.grad(score, has_aux=True)(a)
    else:
        import torch

        a = a.detach().requires_grad_(True)
        logits = head([x, a], training=False)
        (g,) = torch.autograd.grad(sign * logits.sum(), a)
        a, logits = a.detach(), logits.detach()
    a, g, logits = (np.asarray(keras.ops.convert_to_numpy(t), np.float64) for t in (a, g, logits))
    weights = g.mean(axis=(1, 2))  # (B, C)
    return np.maximum(np.einsum("bhwc,bc->bhw", a, weights), 0), logits.reshape(-1)


@pytest.mark.backend
@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("backend", [BACKEND])
def test_gradcam_equals_an_independent_reference(planted, backend, layer):
    """The compiled, chunked path (cam_maps, maps_and_logits) against `reference_gradcam`, on a
    layer at full resolution, one feeding a skip path and the last, for both targets."""
    import cv2

    model, x, _, _ = planted
    peaks = {}
    for target, sign in (("fracture", 1.0), ("normal", -1.0)):
        raw, logits = reference_gradcam(model, x, layer, sign)
        unscaled = cam.cam_maps(model, x, [layer], "gradcam", target, normalize=False)[layer]
        maps, got_logits = cam.maps_and_logits(model, x, layer, "gradcam", target)
        np.testing.assert_allclose(got_logits, logits, rtol=1e-4, atol=1e-4)
        up = np.stack([cv2.resize(m.astype(np.float32), (SIZE, SIZE), interpolation=cv2.INTER_LINEAR) for m in raw])
        np.testing.assert_allclose(unscaled, up, rtol=1e-4, atol=1e-4 * max(up.max(), 1e-12), err_msg=target)
        for got, want in zip(maps, up):
            if want.max() - want.min() > 1e-3 * up.max():  # a flat map scales to zeros: tested elsewhere
                np.testing.assert_allclose(got, (want - want.min()) / (want.max() - want.min()), atol=1e-4)
        peaks[target] = up.max()
    # The "normal" maps may all be zero (on JAX the early layer's are): Grad-CAM is linear before
    # its ReLU, so with non-zero "fracture" maps a sign left unflipped would still show there.
    assert peaks["fracture"] > 0, "the comparison was of zeros only"


@pytest.mark.backend
@pytest.mark.parametrize("backend", [BACKEND])
def test_inner_layer_gradient_matches_finite_differences(planted, backend):
    """The activation-as-input head reproduces the model's logit and its autodiff gradient agrees
    with a central difference, for a layer whose input also feeds a skip path."""
    model, x, _, _ = planted
    plumbing = cam.engine_for(model).layer("inner")
    a, g, logit = plumbing.gradients(x[:2], 1.0)
    np.testing.assert_allclose(logit.ravel(), cam.predict_logits(model, x[:2]), rtol=1e-4, atol=1e-4)

    def total(act):
        return float(keras.ops.convert_to_numpy(plumbing.head([x[:2], act], training=False)).sum())

    # The head is piecewise linear: a step that crosses a ReLU kink skews one difference, so take
    # the median over random directions (measured: median error 0.2-0.4 %, worst single 2.7 %).
    eps, errors = 3e-4, []
    for seed in range(7):
        direction = np.random.default_rng(seed).standard_normal(a.shape).astype(np.float32)
        numeric = (total(a + eps * direction) - total(a - eps * direction)) / (2 * eps)
        analytic = float((g * direction).sum())
        assert abs(numeric) > 1e-3  # the head really depends on the activation
        errors.append(abs(numeric - analytic) / abs(numeric))
    assert np.median(errors) < 0.02, errors


@pytest.mark.backend
@pytest.mark.parametrize("backend", [BACKEND])
def test_densenet_inner_transition_and_last_layers(backend):
    """DenseNet121 (untrained, 32 px): a layer inside a dense block, a transition layer and the
    final relu, in one call with the average. At 32 px `relu` is 1x1: a constant map -> zeros.
    The dense head uses tanh here: an untrained ReLU head of 16-8-4 units is often dead (all
    gradients zero), which would make the gradient check below vacuous."""
    from fracture.config import load
    from fracture.model import build_model

    keras.utils.set_random_seed(0)
    model = build_model(load(overrides=dict(weights="none", image_size=SIZE, dense_units=[16, 8, 4],
                                            dense_activation="tanh"), frozen_random_backbone=True))
    x = np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 1)).astype(np.float32)
    layers = ["conv3_block2_1_relu", "pool4_relu", "relu"]
    maps = cam.cam_maps(model, x, layers, "gradcam", average=True)
    assert set(maps) == {*layers, "average"}
    for m in maps.values():
        assert m.shape == (2, SIZE, SIZE) and np.isfinite(m).all() and 0 <= m.min() and m.max() <= 1
    assert (maps["relu"] == 0).all()
    # Each layer's head recomputes the logit from (image, activation); all must give the model's
    # own probability, including conv3_block2_1_relu whose dense-block concatenations skip around it.
    engine = cam.engine_for(model)  # the engine cam_maps used above: no new compile
    assert set(layers) <= set(engine.cached_layers)
    expected = np.asarray(model.predict_on_batch(x)).reshape(-1)  # Keras's own inference, sigmoid included
    for name in layers:
        _, gradients, logits = engine.layer(name).gradients(x, 1.0)
        np.testing.assert_allclose(probability(logits.reshape(-1)), expected, rtol=1e-3, atol=1e-5, err_msg=name)
        assert np.abs(gradients).max() > 0, f"no gradient reaches {name}"
    # The one-pass call the web app uses: the same maps, and the model's own logits.
    maps_once, logits = cam.maps_and_logits(model, x, "pool4_relu", "gradcam")
    np.testing.assert_allclose(maps_once, maps["pool4_relu"], atol=1e-5)
    np.testing.assert_allclose(probability(logits), expected, rtol=1e-3, atol=1e-5)
    with pytest.raises(FractureError, match="scorecam takes no gradient step"):
        cam.maps_and_logits(model, x, "relu", "scorecam")


def test_engine_owns_the_compiled_functions_for_the_models_lifetime():
    """One engine per model, building a layer once; released explicitly or with the model."""
    import gc
    import weakref

    model = tiny_model()  # untrained and of its own: releasing it costs the other tests nothing
    x = np.zeros((1, SIZE, SIZE, 1), np.float32)
    engine = cam.engine_for(model)
    assert cam.engine_for(model) is engine and engine.cached_layers == []
    cam.layer_maps(model, x, "last")
    assert engine.cached_layers == ["last"] and engine.layer("last") is engine.layer("last")
    cam.release_engine(model)
    assert cam.engine_for(model) is not engine and cam.engine_for(model).cached_layers == []
    cam.layer_maps(model, x, "last")
    gone = weakref.ref(model)
    del model
    gc.collect()
    assert gone() is None, "the engine registry keeps the model alive"
    with pytest.raises(FractureError, match="no longer exists"):
        engine.layer("last")


# --------------------------------------------------------------------------------------------
# measures, pictures, errors (default backend)
# --------------------------------------------------------------------------------------------
def test_pointing_game_and_energy_by_hand():
    maps = np.zeros((2, 8, 8), np.float32)
    maps[0, 2, 5] = 1.0  # y=2, x=5
    maps[1, 7, 7], maps[1, 2, 5] = 1.0, 0.5
    boxes = [(4, 1, 6, 3), (4, 1, 6, 3)]  # x 4..5, y 1..2
    np.testing.assert_array_equal(cam.pointing_game(maps, boxes), [1, 0])
    np.testing.assert_allclose(cam.energy_in_box(maps, boxes), [1.0, 0.5 / 1.5])
    assert cam.pointing_game(maps[:1], [(4, 1, 5, 3)])[0] == 0  # x1 is exclusive
    assert cam.energy_in_box(np.zeros((1, 4, 4)), [(0, 0, 2, 2)])[0] == 0  # no NaN on an empty map


def test_oracle_scores():
    boxes = [(4, 4, 8, 8), (0, 0, 2, 2)]
    assert cam.oracle_scores(boxes, 32, (32, 32)) == (1.0, 1.0)  # full resolution: the box itself
    # 4x4 grid on 32 px: both boxes fall in cell (0, 0), whose upsampled bump peaks on the border
    # plateau at (0, 0): inside the second box only
    pointing, energy = cam.oracle_scores(boxes, 32, (4, 4))
    assert pointing == 0.5 and 0 < energy < 0.5
    # one cell: a constant map scales to zeros, which points nowhere (was a hit at (0, 0) for box 2)
    assert cam.oracle_scores(boxes, 32, (1, 1)) == (0.0, 0.0)


def test_scale_box_and_normalize():
    assert cam.scale_box((10, 20, 30, 40), (100, 200), 50) == (2, 10, 8, 20)  # (H, W) = (100, 200)
    assert cam.scale_box((199, 99, 200, 100), (100, 200), 50) == (49, 49, 50, 50)
    maps = np.stack([np.full((4, 4), 3.0), np.arange(16.0).reshape(4, 4)])
    out = cam.normalize_maps(maps)
    assert (out[0] == 0).all() and out[1].min() == 0 and out[1].max() == 1 and np.isfinite(out).all()


def test_normalize_treats_float_noise_as_constant_relative_to_scale():
    """Regression: a 1x1 map upsampled on another CPU came back as v and v + 1 ulp, which an
    absolute 1e-12 tolerance stretched into rows of 0 and 1. Flatness is judged by the map's scale."""
    value = np.float32(0.37)
    noisy = np.full((1, 8, 8), value, np.float32)
    noisy[0, ::2] = np.nextafter(value, np.float32(1))  # one ulp above on every other row
    assert (cam.normalize_maps(noisy) == 0).all()
    tiny = np.arange(16.0).reshape(1, 4, 4) * 1e-20  # a real pattern at a tiny scale is kept
    np.testing.assert_allclose(cam.normalize_maps(tiny)[0], np.arange(16.0).reshape(4, 4) / 15, atol=1e-6)
    assert (cam.normalize_maps(np.zeros((1, 3, 3))) == 0).all()


def test_deletion_and_insertion_beat_a_random_ordering(planted):
    """Ordering pixels by Grad-CAM removes (restores) the patch first: p(fracture) falls faster
    under deletion and rises faster under insertion than with a random map. The blur is widened
    (8 px) because a 5 px patch, unlike a crack, survives the default 1.3 px blur at 32 px."""
    model, x, boxes = positives(planted)
    good = cam.cam_maps(model, x, ["inner"], "gradcam")["inner"]
    noise = np.random.default_rng(0).random(good.shape).astype(np.float32)
    deletion, insertion = cam.deletion_insertion(model, x, good, steps=8, blur=0.25)
    deletion_random, insertion_random = cam.deletion_insertion(model, x, noise, steps=8, blur=0.25)
    assert deletion.mean() < deletion_random.mean() - 0.2
    # The net fires on a few restored patch pixels, so a random insertion recovers fast too: over
    # 8 seeds and 3 backends the margin was 0.015 to 0.36, hence no margin here.
    assert insertion.mean() > insertion_random.mean()
    deletion_inverted, insertion_inverted = cam.deletion_insertion(model, x, 1 - good, steps=8, blur=0.25)
    assert deletion_inverted.mean() > deletion_random.mean()
    assert insertion_inverted.mean() < insertion_random.mean() - 0.3
    assert ((0 <= deletion) & (deletion <= 1) & (0 <= insertion) & (insertion <= 1)).all()


def test_overlay_blends_and_resizes():
    import matplotlib

    gray = np.full((20, 30), 100, np.uint8)
    heat = np.zeros((4, 4), np.float32)
    heat[:, :2] = 1.0  # hot on the left half
    assert (cam.overlay(gray, heat, alpha=0.0) == 100).all()
    out = cam.overlay(gray, heat)
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    hot = np.asarray(matplotlib.colormaps["jet"](1.0)[:3]) * 255
    np.testing.assert_allclose(out[10, 0], 0.6 * 100 + 0.4 * hot, atol=1)
    assert out[10, 0, 0] > out[10, 0, 2] and out[10, -1, 2] > out[10, -1, 0]  # red left, blue right
    with pytest.raises(FractureError, match="colormap"):
        cam.overlay(gray, heat, colormap="no-such-map")


def test_feature_grid_tiles(planted):
    model, x, _, _ = planted
    grid = cam.feature_grid(model, x[0], "early", max_channels=5)  # 32 px maps, enlarged to 64
    assert grid.dtype == np.uint8 and grid.shape == (2 * 64 + 2, 3 * 64 + 4, 3)
    assert cam.feature_grid(model, x[0], "last").shape == (4 * 48 + 6, 4 * 48 + 6, 3)  # 16 channels, 8 px


def test_feature_figure_names_the_most_active_channels(planted):
    model, x, _, _ = planted
    act = keras.ops.convert_to_numpy(keras.Model(model.input, model.get_layer("last").output)(x[:1], training=False))
    top = sorted(np.argsort(-act[0].mean(axis=(0, 1)))[:5])  # by mean activation, shown in channel order
    fig = cam.feature_figure(model, x[0], "last", max_channels=5)
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == [f"ch {c}" for c in top]
    assert "5 most active of 16 channels" in fig.get_suptitle()


def _blend(gray, value, colormap="jet", alpha=0.4):
    """The overlay colour of a map value over a gray level, computed here from the colormap."""
    import matplotlib

    return (1 - alpha) * gray + alpha * np.asarray(matplotlib.colormaps[colormap](value)[:3]) * 255


def _weak_and_strong():
    """Two raw maps of one shape, the second with a tenth of the first's values."""
    raw = np.zeros((2, 8, 8), np.float32)
    raw[:, 2:6, 2:6] = 1.0
    raw[0] *= 10.0
    return {"gradcam": {"relu": raw}}


def test_shared_scale_keeps_a_weak_map_dim():
    gray = np.full((8, 8), 100, np.uint8)
    shared = cam.scale_maps(_weak_and_strong(), "shared")["gradcam"]["relu"]
    per_map = cam.scale_maps(_weak_and_strong(), "map")["gradcam"]["relu"]
    strong, weak = (cam.overlay(gray, m) for m in shared)
    np.testing.assert_allclose(strong[4, 4], _blend(100, 1.0), atol=1)
    np.testing.assert_allclose(weak[4, 4], _blend(100, 0.1), atol=1)  # a tenth of the evidence: dim
    for m in per_map:  # each map stretched on its own: the weak one is painted as hot as the strong
        np.testing.assert_allclose(cam.overlay(gray, m)[4, 4], _blend(100, 1.0), atol=1)
    assert not cam.scale_maps({"m": {"l": np.zeros((2, 4, 4))}}, "shared")["m"]["l"].any()
    with pytest.raises(FractureError, match="unknown scale 'global'"):
        cam.scale_maps(_weak_and_strong(), "global")


def _pixel_at_centre(fig, ax):
    """RGB of the drawn figure at the centre of an axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    image = np.asarray(canvas.buffer_rgba())[..., :3].astype(float)
    box = ax.get_window_extent()
    return image[image.shape[0] - int((box.y0 + box.y1) / 2), int((box.x0 + box.x1) / 2)]


@pytest.mark.parametrize("scale", ["shared", "map"])
def test_panel_paints_what_the_scale_says(scale):
    gray = np.full((40, 40), 100, np.uint8)
    maps = cam.scale_maps(_weak_and_strong(), scale)["gradcam"]["relu"]
    drawn = []
    for i in range(2):
        fig = cam.cam_panel(gray, {"gradcam": {"relu": maps[i]}}, 0.9, 0.5, scale=scale, n_images=2)
        drawn.append(_pixel_at_centre(fig, fig.axes[1]))  # axes: input, the map, the colorbar
    np.testing.assert_allclose(drawn[0], _blend(100, 1.0), atol=4)
    np.testing.assert_allclose(drawn[1], _blend(100, 0.1 if scale == "shared" else 1.0), atol=4)
    assert ("over 2 images" if scale == "shared" else "its own [min, max]") in fig.axes[-1].get_ylabel()


def test_panel_grid_title_and_near_threshold_note():
    gray = np.full((30, 20), 90, np.uint8)
    maps = {m: {layer: np.random.default_rng(0).random((4, 4)) for layer in ("a", "b", "c")}
            for m in ("gradcam", "layercam")}
    fig = cam.cam_panel(gray, maps, 0.53, 0.5, true_label=0, box=(2, 3, 10, 12), title="img")
    assert len(fig.axes) == 1 + 3 * 2 + 1  # input, 3 layers x 2 methods, one colorbar
    titles = [ax.get_title() for ax in fig.axes[1:-1]]
    assert titles == ["gradcam", "layercam"] + [""] * 4  # methods head the columns
    assert [ax.get_ylabel() for ax in fig.axes[1:-1:2]] == ["a", "b", "c"]  # layers name the rows
    heading = fig.get_suptitle()
    assert "true: normal" in heading and "predicted: abnormal" in heading and "p(fracture) = 0.530" in heading
    assert "within 0.05 of the threshold" in heading
    assert len(fig.axes[0].patches) == 1  # the true box on the input
    confident = cam.cam_panel(gray, maps, 0.9, 0.5).get_suptitle()
    assert "true: unknown" in confident and "threshold" in confident and "within" not in confident


def test_true_label_from_the_index_or_the_mura_folder_name(tmp_path):
    from fracture.cam.draw import _true_label

    positive = tmp_path / "patient00001" / "study1_positive" / "image1.png"
    elsewhere = tmp_path / "upload.png"
    assert _true_label(positive, {}) == 1 and _true_label(elsewhere, {}) is None
    assert _true_label(elsewhere, {str(elsewhere.resolve()): 0}) == 0


def test_cli_rejects_a_bad_look_before_loading_a_model(capsys):
    from fracture.cli import main

    assert main(["cam", "--run", "/no/such/run", "--colormap", "no-such-map"]) == 2
    assert "unknown colormap 'no-such-map'" in capsys.readouterr().err
    assert main(["cam", "--run", "/no/such/run", "--alpha", "1.5"]) == 2
    assert "alpha must be in [0, 1]" in capsys.readouterr().err


def test_user_errors_are_clear(planted):
    model, x, _, _ = planted
    with pytest.raises(FractureError, match=r"no layer 'lats'.*last"):
        cam.cam_maps(model, x, ["lats"])
    with pytest.raises(FractureError, match="'pool' outputs shape"):
        cam.cam_maps(model, x, ["pool"])
    with pytest.raises(FractureError, match="gradcam, gradcampp, xgradcam, layercam, hirescam, .*occlusion"):
        cam.cam_maps(model, x, ["last"], method="gradcam2")
    with pytest.raises(FractureError, match="target"):
        cam.cam_maps(model, x, ["last"], target="broken")
    with pytest.raises(FractureError, match="16x16 px but the model takes 32x32"):
        cam.cam_maps(model, x[:, :16, :16], ["last"])


# --------------------------------------------------------------------------------------------
# on a trained DenseNet121 run folder: render, evaluate, CLI
# --------------------------------------------------------------------------------------------


def test_render_writes_named_files_and_hands_them_to_mlflow(run_copy, tmp_path, monkeypatch):
    calls = []
    tracking = types.SimpleNamespace(log_artifacts=lambda *a, **k: calls.append((a, k)))
    monkeypatch.setitem(sys.modules, "fracture.tracking", tracking)
    (run_copy.path / "mlflow_run_id.txt").write_text("abc123")
    paths = cam.default_images(run_copy, 2)
    layers, methods = ["pool4_relu", "relu"], ["gradcam", "layercam"]
    written = cam.render(run_copy, paths, layers, methods, out_dir=tmp_path / "out", scale="shared",
                         colormap="inferno", alpha=0.5, dpi=80)
    (run_copy.path / "mlflow_run_id.txt").unlink()
    folder = tmp_path / "out" / "tiny" / cam.image_stem(paths[0])
    assert re.fullmatch(r"patient\d{5}_study\d_positive_image\d", folder.name)  # MURA files are all imageK.png
    expected = {f"{m}__{l}.png" for m in methods for l in layers} | {f"features__{l}.png" for l in layers}
    assert {p.name for p in folder.iterdir()} == expected | {"panel.png"}
    assert len(written) == 2 * (len(expected) + 1) and all(p.stat().st_size > 0 for p in written)
    import cv2

    original = cv2.imread(str(paths[0]), cv2.IMREAD_GRAYSCALE)
    assert cv2.imread(str(folder / "gradcam__pool4_relu.png")).shape == (*original.shape, 3)
    assert cam.true_labels(run_copy.config)[str(Path(paths[0]).resolve())] == 1  # a positive, by its folder
    panel = cv2.imread(str(folder / "panel.png"))
    assert panel.shape[1] == round(80 * (2.3 * 3 + 0.9))  # the original and 2 methods, 2.3 in each, at 80 dpi
    (args, kwargs), = calls  # one call, with the per-image folders (file names repeat across images)
    assert args[0] == run_copy.path and kwargs == {"artifact_path": "cam"}
    assert sorted(args[1]) == sorted({p.parent for p in written}) and len(args[1]) == 2


def test_evaluate_localization_writes_the_table(run_copy):
    table = cam.evaluate_localization(run_copy, ["gradcam", "scorecam"], ["pool4_relu"], limit=2, steps=4)
    assert list(table.columns) == cam.EVAL_COLUMNS
    assert list(zip(table["method"], table["layer"])) == [
        ("gradcam", "pool4_relu"), ("scorecam", "pool4_relu"), ("random_pixel", "-"), ("random_grid", "pool4_relu")]
    assert (table["n_images"] == 2).all()
    scores = table[["pointing_game", "energy_in_box", "deletion_auc", "insertion_auc"]].to_numpy()
    assert np.isfinite(scores).all() and (scores >= 0).all() and (scores <= 1).all()
    import pandas as pd

    # The distractor columns agree with a count made here from the box file and the maps.
    _, x, _, distractors = cam.metrics._positives_with_boxes(run_copy, limit=2, split="test")
    maps = cam.cam_maps(run_copy.model, x, ["pool4_relu"], "gradcam")["pool4_relu"]
    expected_peak = []
    for m, boxes in zip(maps, distractors):
        y, xx = np.unravel_index(np.argmax(m), m.shape)
        expected_peak.append(any(x0 <= xx < x1 and y0 <= y < y1 for x0, y0, x1, y1 in boxes) and m.max() > m.min())
    gradcam_row = table.iloc[0]
    assert gradcam_row["n_with_distractor"] == sum(bool(b) for b in distractors)
    if gradcam_row["n_with_distractor"]:
        assert gradcam_row["distractor_peak"] == pytest.approx(np.mean(expected_peak))
        assert 0 <= gradcam_row["distractor_energy"] <= 1
    else:
        assert np.isnan(gradcam_row["distractor_peak"])

    stored = pd.read_csv(run_copy.path / "cam_eval.csv", keep_default_na=False)
    assert list(stored.columns) == cam.EVAL_COLUMNS and len(stored) == 4


def test_evaluation_of_a_run_another_process_is_writing_is_refused_and_writes_nothing(run_copy):
    """cam_eval.csv is written under the run folder's lock, as train and evaluate write theirs: a
    live holder in another process makes `cam --evaluate` stop with RunLocked naming its PID."""
    from fracture.runlock import RunLocked

    target = run_copy.path / "cam_eval.csv"
    before = target.read_bytes() if target.exists() else None
    with lock_holder(run_copy.path) as holder:
        with pytest.raises(RunLocked, match=f"PID {holder.pid}"):
            cam.evaluate_localization(run_copy, ["gradcam"], ["pool4_relu"], limit=2, steps=0)
    assert (target.read_bytes() if target.exists() else None) == before


def test_split_chooses_the_images(run_copy, monkeypatch):
    from fracture.data import load_index

    frame = load_index(run_copy.config)
    split_of = dict(zip(frame["path"], frame["split"]))
    for split in ("val", "test"):
        paths = cam.default_images(run_copy, 4, split=split)
        assert len(paths) == 4 and {split_of[p] for p in paths} == {split}
        positives = int(((frame["split"] == split) & (frame["label"] == 1)).sum())
        chosen, x, boxes, distractors = cam.metrics._positives_with_boxes(run_copy, limit=3, split=split)
        assert len(chosen) == len(x) == len(boxes) == len(distractors) == min(3, positives) > 0
        assert {split_of[p] for p in chosen} == {split} and all("_positive" in str(p) for p in chosen)
    original, asked = cam.metrics._positives_with_boxes, []
    monkeypatch.setattr(cam.metrics, "_positives_with_boxes",
                        lambda run, limit, split: asked.append(split) or original(run, limit, split))
    table = cam.evaluate_localization(run_copy, ["gradcam"], ["relu"], limit=1, steps=2, split="val")
    assert asked == ["val"] and (table["n_images"] == 1).all()


def test_evaluate_needs_boxes(run_copy, synth_root, tmp_path):
    tree = tmp_path / "real" / "MURA-v1.1"
    shutil.copytree(synth_root, tree)
    (tree / "fracture_boxes.csv").unlink()
    run = dataclasses.replace(run_copy, config=dataclasses.replace(run_copy.config, data_dir=str(tree)))
    with pytest.raises(FractureError, match="needs fracture boxes"):
        cam.evaluate_localization(run, ["gradcam"], ["relu"])


def test_cli_cam_evaluates_and_renders(run_copy, tmp_path, capsys, monkeypatch):
    from fracture.cli import main

    # The already loaded run, so its compiled CAM functions are reused (loading costs seconds).
    asked = []
    monkeypatch.setattr("fracture.runs.load_run", lambda path: asked.append(path) or run_copy)
    out = tmp_path / "maps"
    images = cam.default_images(run_copy, 2)
    assert main(["cam", "--run", str(run_copy.path), "--out", str(out), "--layers", "relu", "--methods",
                 "gradcam", "--evaluate", "--limit", "2", "--images", *images]) == 0
    printed = capsys.readouterr().out
    assert "pointing_game" in printed and "random" in printed and (run_copy.path / "cam_eval.csv").is_file()
    assert "2 positive test images" in printed
    panels = sorted(out.glob("tiny/*/panel.png"))
    assert len(panels) == 2 and str(panels[0]) in printed and asked == [str(run_copy.path)]
    assert main(["cam", "--run", str(run_copy.path), "--methods", "gradcam,gradcam3"]) == 2
    assert "unknown CAM method ['gradcam3']" in capsys.readouterr().err


def test_distractor_scores_on_hand_made_maps():
    maps = np.zeros((3, 10, 10), np.float32)
    maps[0, 1, 1] = 1.0  # peaks in its marker box
    maps[1, 8, 8] = 1.0  # peaks outside its two boxes; a quarter of its mass is inside one
    maps[1, 0, 0] = 1 / 3
    boxes = [[(0, 0, 3, 3)], [(0, 0, 2, 2), (5, 0, 7, 2)], []]
    assert cam.distractor_peak(maps, boxes).tolist() == [1.0, 0.0, 0.0]
    energy = cam.distractor_energy(maps, boxes)
    assert energy[0] == pytest.approx(1.0) and energy[1] == pytest.approx(0.25) and np.isnan(energy[2])
    flat = np.ones((1, 10, 10), np.float32)  # a constant map peaks nowhere, even inside a box
    assert cam.distractor_peak(flat, [[(0, 0, 3, 3)]]).tolist() == [0.0]


def test_steps_zero_scores_localization_only(run_copy):
    table = cam.evaluate_localization(run_copy, ["gradcam"], ["relu"], limit=2, steps=0)
    assert table[["deletion_auc", "insertion_auc"]].isna().all().all()
    assert np.isfinite(table["pointing_game"]).all() and (table["n_images"] == 2).all()
