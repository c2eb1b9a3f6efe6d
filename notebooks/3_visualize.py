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
#     display_name: Python (fracture)
#     language: python
#     name: fracture
# ---

# %% [markdown]
# # 3 · What does the network look at?
#
# **What you will learn:** how to draw class activation maps (Grad-CAM, Grad-CAM++, LayerCAM,
# HiResCAM, Score-CAM) on early, middle and late layers of a trained run, how to read them and
# when not to trust them, the feature maps of a layer, and how to score a map against the known
# fracture box of the synthetic data.
#
# **Time and hardware:** a few minutes on a 2-core CPU (Score-CAM is the slow method: one forward
# pass per channel batch). It needs a trained run (`make demo`). The stored outputs come from the
# demo recipe's run. Files land in `layer_outputs/<run>/<image>/`.

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
localization_layers = ["relu", "pool4_relu"]  # layers scored against the fracture boxes

# %% [markdown]
# ## Setup
# You should see the run and its test metrics at image level.

# %% tags=["nbval-ignore-output"]
# %matplotlib inline
import fracture as fr
from fracture import cam
from fracture import notebook as nb

loaded = nb.load_run(run, profile)
print("profile:", nb.profile(profile), "| run:", loaded.name)
fr.summary_table(loaded.metrics["test"])

# %% [markdown]
# ## CAM panels
# For each image: the original with its prediction (and, on synthetic data, the true fracture
# box dashed), then one overlay per layer (rows) and method (columns), jet colormap at alpha 0.4:
# red is where the map is high. The first panel is an abnormal image, the second a normal one.

# %% tags=["figure"]
paths = cam.default_images(loaded, n=images)
written = cam.render(loaded, paths, layers, methods, out_dir=nb.root() / "layer_outputs")
for panel in [p for p in written if p.name == "panel.png"]:
    display(nb.png(panel))

# %% [markdown]
# **How to read a map.** A CAM answers "which regions, weighted by this layer's features, raise
# the fracture score?", not "where is the fracture". On the abnormal image a trustworthy map
# covers the crack inside the dashed box; the late layer (`relu`) is coarse (each cell covers
# 32×32 input pixels) but the most class-specific, earlier layers are sharper but respond to edges
# whatever the class. The methods mostly agree on a well-trained model; where they disagree,
# believe none of them.
#
# **When not to trust it.** Every map is scaled to [0, 1], so even the normal image gets a red
# spot: read the map together with the probability above it. A map that looks the same for a
# trained and a randomly initialised model (Adebayo et al., 2018, "Sanity checks for saliency
# maps") explains the architecture, not the training. A map on the image border, a text marker or
# the hardware says the model may have learned a shortcut. And a map is no proof of a diagnosis:
# it shows correlation inside one model.

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
# The channels of one layer's activation on the first image, as a grid: what the layer computes
# before any CAM weighting. Early layers show edges, later ones blobs that follow the bone.

# %% tags=["figure"]
nb.image_figure(cam.feature_grid(loaded.model, batch[0], "pool3_relu"))

# %% [markdown]
# ## Do the maps find the fracture?
# On synthetic data every positive test image's fracture box is known. **Pointing game:** share of
# images whose map maximum falls inside the box. **Energy in box:** share of the map's mass inside
# the box. **Deletion / insertion:** area under the probability curve as the most important pixels
# are removed (lower is better) or added (higher is better). The `random` rows are random maps: a
# map worth reading beats them clearly. On the demo run, Grad-CAM on `relu` points into the box on
# most positive images while random maps rarely do (docs/cam.md).

# %% tags=["nbval-ignore-output"]
table = cam.evaluate_localization(loaded, methods, localization_layers)
table

# %% [markdown]
# The same table is stored next to the run as `cam_eval.csv`. You should see its columns and `True`.

# %%
print(sorted(table.columns), (loaded.path / "cam_eval.csv").is_file())

# %% [markdown]
# ## What to try next
# - `python -m fracture cam --layers relu,pool4_relu --methods gradcam,layercam --evaluate` does
#   the same from a shell; docs/cam.md explains the methods and the scores.
# - Try `target="normal"` in `cam.cam_maps` to see what argues against a fracture.
# - Compare the maps of a run trained for one epoch with the best run's: maps that do not change
#   with training are not explaining what was learned.
