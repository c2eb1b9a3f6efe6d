"""Class activation maps on any layer, on the TensorFlow, JAX and PyTorch backends.

Shaped like pytorch-grad-cam, one job per module:

    methods.py   the methods as pure NumPy: (activations A, gradients G) -> map, and the
                 input-space arithmetic (saliency, SmoothGrad, Integrated Gradients, occlusion)
    backend.py   A and G per backend behind `CamEngine(model)`, which owns the compiled
                 functions; also the gradients with respect to the input pixels
    maps.py      map pipeline: method, ReLU, upsampling, [0, 1] scaling; Score-CAM, Ablation-CAM,
                 eigen_smooth and aug_smooth
    pixels.py    input-space maps: noise, baselines, occlusion windows
    road.py      ROAD faithfulness (remove and debias by noisy linear imputation)
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
from fracture.cam.checks import (
    PIXELS,
    TARGETS,
    as_batch,
    check_methods,
    method_layers,
    spatial_layer,
    target_sign,
)
from fracture.cam.cli import cli_cam
from fracture.cam.maps import (
    AUG_FACTORS,
    AUG_FLIPS,
    SCORECAM_CHANNELS,
    cam_maps,
    layer_maps,
    maps_and_logits,
    normalize_maps,
    scorecam_channels_of,
    upsample,
)
from fracture.cam.methods import (
    CLASS_AGNOSTIC,
    DEFAULT_METHODS,
    GRADIENT_METHODS,
    INPUT_METHODS,
    LAYER_METHODS,
    METHODS,
    ablation_weights,
    eigencam,
    eigengradcam,
    first_component,
    gradcam,
    gradcam_elementwise,
    gradcampp,
    hirescam,
    layercam,
    scorecam_weights,
    xgradcam,
)
from fracture.cam.pixels import IG_BASELINE, IG_BASELINES, baseline_images, input_maps
from fracture.cam.road import ROAD_COLUMNS, ROAD_PERCENTS, linear_imputation, removal_mask, road_scores
from fracture.cam.metrics import (
    EVAL_COLUMNS,
    RANDOM_DRAWS,
    boxes_by_path,
    deletion_insertion,
    distractor_boxes_by_path,
    distractor_energy,
    distractor_peak,
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
    "PIXELS", "TARGETS", "as_batch", "check_methods", "method_layers", "spatial_layer", "target_sign", "cli_cam",
    "AUG_FACTORS", "AUG_FLIPS", "SCORECAM_CHANNELS", "cam_maps", "layer_maps", "maps_and_logits", "normalize_maps", "scorecam_channels_of",
    "upsample",
    "CLASS_AGNOSTIC", "DEFAULT_METHODS", "GRADIENT_METHODS", "INPUT_METHODS", "LAYER_METHODS", "METHODS",
    "ablation_weights", "eigencam", "eigengradcam", "first_component", "gradcam", "gradcam_elementwise",
    "gradcampp", "hirescam", "layercam", "scorecam_weights", "xgradcam",
    "IG_BASELINE", "IG_BASELINES", "baseline_images", "input_maps",
    "ROAD_COLUMNS", "ROAD_PERCENTS", "linear_imputation", "removal_mask", "road_scores",
    "EVAL_COLUMNS", "RANDOM_DRAWS", "boxes_by_path", "deletion_insertion", "distractor_boxes_by_path",
    "distractor_energy", "distractor_peak", "energy_in_box",
    "evaluate_localization", "oracle_scores", "pointing_game", "scale_box",
    "PASS_BELOW", "SANITY_COLUMNS", "cascade", "cascade_scores", "randomize", "sanity_check", "sanity_figure",
    "ssim", "verdicts",
    "cam_panel", "default_images", "feature_figure", "feature_grid", "image_stem", "overlay", "render",
    "scale_maps", "true_labels",
]
