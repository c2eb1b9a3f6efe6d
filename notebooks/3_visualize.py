# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 3 · What does the network look at?
#
# **What you will learn:** how to draw class activation maps (Grad-CAM, Grad-CAM++, LayerCAM,
# HiResCAM, Score-CAM) on early, middle and late layers of a trained run, how to read them and
# when not to trust them, the feature maps of a layer, a sanity check that tells a map explaining
# the model from one explaining only the image, and how to score a map against the known fracture
# box of the synthetic data, next to random maps.
#
# **Time and hardware:** a few minutes on a 2-core CPU (Score-CAM is the slow method: one forward
# pass per channel batch). It needs a trained run (`make demo`). The stored outputs come from the
# demo recipe's run. Files land in `layer_outputs/<run>/<image>/` and, for the sanity check, in
# the run folder.

# %% [markdown]
# ## Configurable parameters
# Layers are DenseNet121 names: `relu` is the last layer (5×5 cells at 160 px), `pool4_relu` and
# `pool3_relu` are transition blocks with finer grids (10×10 and 20×20 at 160 px).

# %% tags=["parameters"]
profile = "full"  # full: the run below; smoke: the train notebook's 48-px smoke run (trained if missing)
run = ""  # a run folder; empty: the newest complete run in saved_models/
layers = ["relu", "pool4_relu", "pool3_relu"]  # layers to draw maps for, late to early
methods = ["gradcam", "gradcampp", "layercam", "hirescam", "scorecam"]
images = 2  # test images to draw, half abnormal then half normal
sanity_methods = ["gradcam", "layercam"]  # methods put through the weight-randomization sanity check
sanity_layers = ["relu", "pool4_relu"]  # layers of the sanity check
sanity_images = 4  # test images of the sanity check, half abnormal
localization_layers = ["relu", "pool4_relu"]  # layers scored against the fracture boxes
localization_images = 0  # positive test images scored; 0 = all (92 on the demo data, as `make demo` scores them)

# %% [markdown]
# ## Setup
# You should see the run, its threshold and its scores with 95 % intervals: the final test scores
# when the test split has been evaluated (`1_train`, `make demo`), else the validation scores.

# %% tags=["nbval-ignore-output"]
# %matplotlib inline
import pandas as pd

import fracture as fr
from fracture import cam
from fracture import notebook as nb
from fracture.evaluation import format_table

loaded = nb.load_run(run, profile)
split = "test" if "test" in loaded.metrics else "val"
print("profile:", nb.profile(profile), "| run:", loaded.name, f"| threshold {loaded.threshold:g} | {split} split:")
print(format_table(loaded.metrics[split]))

# %% [markdown]
# ## CAM panels
# One panel per image: the input on the left (on synthetic data with the true fracture box
# dashed), then one overlay per layer (rows) and method (columns), jet colormap at alpha 0.4, one
# shared colorbar: red is where the map is high. The title gives the true label, the prediction
# and its probability at the run's threshold (green when right, red when wrong) and flags a
# probability close to the threshold; each tile prints its map's raw peak (a 0 means no positive
# evidence at all). The first panel is an abnormal image, the second a normal one.

# %% tags=["figure"]
paths = cam.default_images(loaded, n=images)
written = cam.render(loaded, paths, layers, methods, out_dir=nb.root() / "layer_outputs")
for panel in [p for p in written if p.name == "panel.png"]:
    display(nb.picture(panel))

# %% [markdown]
# **How to read a map.** A CAM answers "which regions, weighted by this layer's features, raise
# the fracture score?", not "where is the fracture". On the abnormal image a trustworthy map
# covers the crack inside the dashed box; the late layer (`relu`) is coarse (each cell covers
# 32×32 input pixels) but the most class-specific, earlier layers are sharper but respond to edges
# whatever the class. The methods mostly agree on a well-trained model; where they disagree,
# believe none of them.
#
# **When not to trust it.** Every map here is stretched to its own [0, 1], so even the normal
# image gets a red spot: read the map together with the probability above it and the peak in the
# tile, or draw with `cam.render(..., scale="shared")`, which scales each method × layer by its
# largest value over all images drawn together, so weak evidence stays dim. A map on the image
# border, a text marker or the hardware says the model may have learned a shortcut. A map that
# does not change when the weights are randomized explains the image, not the model (the sanity
# check below). And a map is no proof of a diagnosis: it shows correlation inside one model.

# %% [markdown]
# ## Maps as arrays
# `cam.cam_maps` returns one `(B, H, W)` array per layer at the input resolution, scaled to
# [0, 1]: the overlays above are these arrays drawn on the images. You should see `True`.

# %%
batch = fr.load_images(paths, loaded.config.image_size)[0]
maps = cam.cam_maps(loaded.model, batch, layers, method="gradcam")
size = loaded.config.image_size
print("one map per image, at the input size, in [0, 1]:",
      all(m.shape == (len(paths), size, size) and 0 <= m.min() <= m.max() <= 1 for m in maps.values()))

# %% [markdown]
# ## Feature maps
# The channels of one layer's activation on the first image, the most active first, each tile
# titled with its channel index and scaled to its own range: what the layer computes before any
# CAM weighting. Early layers show edges, later ones blobs that follow the bone.

# %% tags=["figure"]
cam.feature_figure(loaded.model, batch[0], "pool3_relu", max_channels=48, title=cam.image_stem(paths[0]))

# %% [markdown]
# ## Sanity check: do the maps depend on what the model learned?
# Adebayo et al. (2018, "Sanity Checks for Saliency Maps") showed that some saliency maps look
# the same for a trained and a randomly initialised network: they trace the image's edges, not
# the model's reasoning. `cam.sanity_check` re-draws the weights of a copy of the model from the
# top down (the dense head, then DenseNet's stages 5 to 1), and after each step compares every
# map with the trained model's on the same images: `spearman` is the rank correlation of the maps
# as drawn, `spearman_abs` the same before the ReLU (the stricter one), `ssim` their structural
# similarity. The table is stored as `cam_sanity.csv`, the figure as `plots/cam_sanity.png`.

# %% tags=["nbval-ignore-output"]
sanity = cam.sanity_check(loaded, sanity_methods, sanity_layers, limit=sanity_images)
sanity.round(3)

# %% [markdown]
# **How to read it.** Down the table (and down the figure's rows) more of the model is random;
# a map that explains the model must drift away from the original as soon as the head is
# randomized, its correlation falling towards 0. A map that survives randomization, still
# correlated and still looking the same with every layer random, is not explaining the model: do
# not read it as the model's evidence, whatever it shows. A method passes when its mean `spearman`
# with every layer randomized is below 0.5 (`cam.PASS_BELOW`).

# %% tags=["figure"]
nb.picture(loaded.path / "plots" / "cam_sanity.png")

# %% [markdown]
# The verdict per method and layer: the mean rank correlation with every layer randomized, and
# whether it is below 0.5. NaN (and no pass) means every original map was blank: the model found
# no positive evidence on that layer, so there was nothing to test.

# %% tags=["nbval-ignore-output"]
pd.DataFrame(cam.verdicts(sanity), index=["spearman, all randomized", "passes"]).T

# %% [markdown]
# ## Do the maps find the fracture?
# On synthetic data every positive test image's fracture box is known. **Pointing game:** share of
# images whose map maximum falls inside the box. **Energy in box:** share of the map's mass inside
# the box. A blank map (the method found no positive evidence) counts as a miss, not as a hit.
# **Deletion / insertion:** area under the probability curve as the most important pixels are
# removed (lower is better) or added (higher is better). Two baselines: `random_pixel` draws a
# random value per pixel, `random_grid` one per cell of each layer's grid, upsampled like that
# layer's maps (smooth blobs, the fair baseline for a coarse layer: it deletes whole regions at a
# time and hits large boxes more often). A map worth reading beats both clearly, on its own
# layer's `random_grid` row above all. On the demo run, Grad-CAM on `relu` points into the box on
# most positive images while random maps rarely do (docs/cam.md).

# %% tags=["nbval-ignore-output"]
table = cam.evaluate_localization(loaded, methods, localization_layers, limit=localization_images)
table

# %% [markdown]
# What a perfect map scores on each layer's grid (the box itself seen through that grid's cells):
# the ceiling for that layer's rows. The same table is stored next to the run as `cam_eval.csv`.
# You should see the two baselines, the table's columns and `True`.

# %% tags=["nbval-ignore-output"]
print("baselines:", sorted(set(table["method"]) - set(methods)))
print(sorted(table.columns), (loaded.path / "cam_eval.csv").is_file())

# %% tags=["nbval-ignore-output"]
pd.DataFrame(table.attrs["oracle"], index=["grid", "pointing_game", "energy_in_box"]).T

# %% [markdown]
# ## What to try next
# - `python -m fracture cam --layers relu,pool4_relu --methods gradcam,layercam --evaluate` does
#   the same from a shell, `--sanity` runs the sanity check; docs/cam.md explains the methods, the
#   scores and the check.
# - Try `target="normal"` in `cam.cam_maps` to see what argues against a fracture.
# - Try `scale="shared"`, `colormap="turbo"` or `alpha=0.6` in `cam.render`.
# - Compare the maps of a run trained for one epoch with the best run's: maps that do not change
#   with training are not explaining what was learned.
