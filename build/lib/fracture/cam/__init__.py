"""Class activation maps on any layer, on the TensorFlow, JAX and PyTorch backends.

Shaped like pytorch-grad-cam, one job per module:

    methods.py   the methods as pure NumPy: (activations A, gradients G) -> map
    backend.py   A and G per backend behind `CamEngine(model)`, which owns the compiled functions
    maps.py      map pipeline: method, ReLU, upsampling, [0, 1] scaling; Score-CAM
    checks.py    checks a user can fail (layer, method, target, image batch)
    draw.py      overlays, labelled feature grids, panels (layers x methods), PNG files (not
                 `render.py`: a module of that name would be shadowed here by the `render`
                 function, and `import fracture.cam.render as m` would hand back the function)
    metrics.py   pointing game, energy in box, oracle, deletion/insertion, evaluate_localization
    sanity.py    sanity checks: maps against a copy of the model randomized from the top down
    cli.py       the `cam` verb

Everything public is re-exported here: `from fracture import cam; cam.cam_maps(...)`.
"""

from fracture.cam.backend import (
    CHUNK,
    GRADIENT_CHUNK,
    CamEngine,
    LayerPlumbing,
    engine_for,
    predict_logits,
    release_engine,
)
from fracture.cam.checks import TARGETS, as_batch, check_methods, spatial_layer, target_sign
from fracture.cam.cli import cli_cam
from fracture.cam.maps import (
    SCORECAM_CHANNELS,
    cam_maps,
    layer_maps,
    maps_and_logits,
    normalize_maps,
    scorecam_channels_of,
    upsample,
)
from fracture.cam.methods import (
    GRADIENT_METHODS,
    METHODS,
    gradcam,
    gradcampp,
    hirescam,
    layercam,
    scorecam_weights,
)
from fracture.cam.metrics import (
    EVAL_COLUMNS,
    RANDOM_DRAWS,
    boxes_by_path,
    deletion_insertion,
    energy_in_box,
    evaluate_localization,
    oracle_scores,
    pointing_game,
    scale_box,
)
from fracture.cam.sanity import (
    PASS_BELOW,
    SANITY_COLUMNS,
    cascade,
    cascade_scores,
    randomize,
    sanity_check,
    sanity_figure,
    ssim,
    verdicts,
)
from fracture.cam.draw import (
    cam_panel,
    default_images,
    feature_figure,
    feature_grid,
    image_stem,
    overlay,
    render,
    scale_maps,
    true_labels,
)

__all__ = [
    "CHUNK", "GRADIENT_CHUNK", "CamEngine", "LayerPlumbing", "engine_for", "predict_logits", "release_engine",
    "TARGETS", "as_batch", "check_methods", "spatial_layer", "target_sign", "cli_cam",
    "SCORECAM_CHANNELS", "cam_maps", "layer_maps", "maps_and_logits", "normalize_maps", "scorecam_channels_of",
    "upsample",
    "GRADIENT_METHODS", "METHODS", "gradcam", "gradcampp", "hirescam", "layercam", "scorecam_weights",
    "EVAL_COLUMNS", "RANDOM_DRAWS", "boxes_by_path", "deletion_insertion", "energy_in_box",
    "evaluate_localization", "oracle_scores", "pointing_game", "scale_box",
    "PASS_BELOW", "SANITY_COLUMNS", "cascade", "cascade_scores", "randomize", "sanity_check", "sanity_figure",
    "ssim", "verdicts",
    "cam_panel", "default_images", "feature_figure", "feature_grid", "image_stem", "overlay", "render",
    "scale_maps", "true_labels",
]
