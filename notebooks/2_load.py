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
# # 2 · Load a trained run and predict
#
# **What you will learn:** how to load a run folder written by `1_train` (or
# `python -m fracture train`), check that it reproduces the validation scores stored at training
# time, predict single image files at the run's threshold, and build MURA's study-level score
# from image probabilities.
#
# **Time and hardware:** about a minute on a 2-core CPU; it needs a trained run (`make demo`,
# or the train notebook). The stored outputs come from the demo recipe's run.

# %% [markdown]
# ## Configurable parameters

# %% tags=["parameters"]
profile = "full"  # full: the run below; smoke: the train notebook's 48-px smoke run (trained if missing)
run = ""  # a run folder, e.g. saved_models/20261123-101500-densenet121; empty: the newest complete run

# %% [markdown]
# ## Setup
# `nb.load_run` returns the model, its resolved config and its stored metrics. `loaded.threshold`
# is the decision threshold every reader of the run uses: the config's number, or for
# `threshold = "auto"` the one chosen on validation at training time (stored in `metrics.json`).
# You should see the run, its backbone, input size and threshold with the rule that set it.

# %% tags=["nbval-ignore-output"]
# %matplotlib inline
import pandas as pd

import fracture as fr
from fracture import notebook as nb
from fracture.evaluation import format_table

pd.set_option("display.max_colwidth", None, "display.width", 120)  # whole file paths in tables

loaded = nb.load_run(run, profile)
print("profile:", nb.profile(profile), "| run:", loaded.name)
print("backbone:", loaded.config.backbone, "| input:", loaded.model.input_shape, "| threshold:",
      f"{loaded.threshold:g} ({loaded.metrics.get('threshold_rule', 'config')})")

# %% [markdown]
# ## Re-evaluate
# The validation split is read again from the run's data source, decoded and scored
# (`write=False`: nothing in the run folder changes). This is the check that the saved model, not
# just the training process, holds what was measured. It uses validation, not test: the test
# split is the final report, scored once (`1_train`, or `python -m fracture evaluate --split
# test`), and re-scoring it is not a habit to start. The values carry 95 % bootstrap intervals.

# %% tags=["nbval-ignore-output"]
scores = fr.evaluate(loaded, split="val", write=False)
print(format_table(scores))

# %% [markdown]
# You should see `True`: the numbers equal what training stored, threshold included.

# %%
stored = loaded.metrics["val"]
same = scores["threshold"] == loaded.threshold and all(
    abs(scores[level][key] - stored[level][key]) < 1e-6
    for level in ("image", "study") for key in ("accuracy", "auc", "kappa", "sensitivity", "specificity"))
print("re-evaluation equals the stored metrics:", same)

# %% [markdown]
# ## Predict single images
# Any image file (PNG, JPEG, DICOM) or folder: the saved model takes raw pixels, so nothing but
# the file is needed. You should see one row per image with its probability and its label at the
# run's threshold (`loaded.threshold`, the same one the CLI and the web app apply); paths are shown
# relative to the run's data folder, and `reason` says why a file could not be read.

# %%
paths = fr.load_index(loaded.config).query("split == 'test'")["path"].head(4).tolist()
print(len(paths), "images")

# %% tags=["nbval-ignore-output"]
nb.relative_paths(fr.predict_paths(loaded, paths), to=loaded.config.data_dir)

# %% [markdown]
# ## Study level
# MURA scores a study by the mean of its images' probabilities. Here is the validation study with
# the most images (from the predictions training stored): its images, then the study row. One
# confident view can outvote an unsure one, which is the point: a radiologist also reads the
# views together.

# %% tags=["nbval-ignore-output"]
val = nb.predictions(loaded, "val")
study = val.groupby("study").size().idxmax()
images_of_study = val[val["study"] == study]
display(nb.relative_paths(images_of_study, to=loaded.config.data_dir)[["path", "label", "probability"]])
fr.study_level(images_of_study)

# %% [markdown]
# ## What to try next
# - `python -m fracture predict IMAGE_OR_FOLDER` does the same from a shell;
#   `python -m fracture serve` puts it behind a web page (docs/app.md).
# - `3_visualize` shows where the model looks when it makes these predictions.
