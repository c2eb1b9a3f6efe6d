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
# # 1 · Train a fracture detector on X-rays
#
# **What you will learn:** how `fracture` turns a folder of radiographs into a trained Keras
# model and a scored run folder: the patient-level split, class weighting, a DenseNet121 with its
# preprocessing inside the model, training with Keras callbacks, model and threshold selection on
# validation only, and the final, once-only test evaluation at image and study level (95 %
# bootstrap intervals, ROC, precision-recall, calibration, confusion matrices, Cohen's kappa).
#
# **Time and hardware:** with `profile = "full"` this notebook uses the demo recipe
# (`configs/demo.yaml`: DenseNet121 from scratch on the synthetic MURA-format data of `make data`).
# If `make demo` already trained that recipe, the notebook reuses its run and finishes in about a
# minute on a 2-core CPU; training it here takes 16-23 epochs (seed 1: 20 epochs, 9 min on a 2-core
# AMD EPYC; docs/demo.md).
# `profile = "smoke"` runs a 48-px, 2-epoch model in about a minute: it checks that every cell
# works, nothing more. The cost of the real recipe (MURA humerus, 224 px,
# 40 epochs) is estimated at the end.
#
# The stored outputs below come from the full profile: the demo recipe's run.

# %% [markdown]
# ## Configurable parameters
# Each is a separate variable, so papermill can set it: `papermill 1_train.ipynb out.ipynb -p profile smoke`.
# `None` (or an empty string) keeps the config file's value. Any other `fracture.Config` key can be set the same way
# once you add it to `nb.config(...)` below.

# %% tags=["parameters"]
profile = "full"  # full: the recipe in config_file; smoke: a 48-px, 2-epoch check that every cell runs
config_file = "configs/demo.yaml"  # empty: the Config defaults, i.e. the real MURA humerus recipe
data_dir = None  # e.g. data/MURA-v1.1 (with config_file empty, that is the default)
image_size = None  # model input, pixels
epochs = None  # training epochs
batch_size = None  # images per training step
run_name = ""  # empty: a new timestamped run folder; an unfinished run of this name resumes
reuse = True  # reuse the newest complete run of exactly this recipe (make demo's) instead of training again
verbose = "auto"  # Keras output while training: auto = progress bar here, 2 = one line per epoch, 0 = none

# %% [markdown]
# ## Setup
# The parameters become one checked `Config`: an unknown key or a bad value stops here with a
# message naming it. Relative paths are taken from the repository root (Jupyter runs the kernel
# in `notebooks/`). `%matplotlib inline` makes Jupyter draw the `Figure` objects that the
# `fracture.notebook` helpers return.

# %% tags=["nbval-ignore-output"]
# %matplotlib inline
import pandas as pd

import fracture as fr
from fracture import notebook as nb
from fracture import plots
from fracture.evaluation import format_study_type_table, format_table
from fracture.training import class_weights

cfg = nb.config(profile, config_file, data_dir=data_dir, image_size=image_size, epochs=epochs,
                batch_size=batch_size, run_name=run_name, verbose=verbose)
print("profile:", nb.profile(profile))
nb.settings(cfg, "data_dir", "backbone", "weights", "image_size", "batch_size", "epochs", "optimizer",
            "learning_rate", "trainable_layers")

# %% [markdown]
# ## Data
# One table row per image: path, label (read from the study folder's name), patient, study, study
# type and split. MURA's own `valid` folder is our test set and plays no part in training or in
# picking the best epoch or the threshold; validation patients are carved out of `train`. You
# should see image, study and patient counts per split and class.

# %% tags=["nbval-ignore-output"]
frame = fr.load_index(cfg)
fr.describe_data(frame)

# %% [markdown]
# A few training images with their labels and patients. Synthetic positives carry a displaced
# crack; on MURA the abnormalities are far subtler.

# %% tags=["figure"]
nb.samples_figure(frame)

# %% [markdown]
# **Why split by patient:** one patient's radiographs look alike (same bones, same hardware, same
# scanner), so images of one patient on both sides of a split would let the model score well by
# recognising the patient. `fr.load_index` holds out whole patients for validation. You should see
# zero shared patients.

# %%
patients = frame.groupby("split")["patient"].agg(set)
print("patients in both train and val:", len(patients["train"] & patients["val"]))
print("patients in both train and test:", len(patients["train"] & patients["test"]))

# %% [markdown]
# **Why weight the classes:** MURA has more normal than abnormal studies, and an unweighted loss
# rewards predicting "normal". Following the MURA paper, positives are weighted by |N|/(|A|+|N|)
# and negatives by |A|/(|A|+|N|), from study counts, so both classes weigh the same in total.
# You should see the larger weight on the rarer class.

# %% tags=["nbval-ignore-output"]
class_weights(frame[frame["split"] == "train"])

# %% [markdown]
# ## Model
# One flat Keras graph: raw grayscale pixels, augmentation (active in training only),
# grayscale→RGB, the backbone's own `preprocess_input`, the backbone, three dense layers and one
# sigmoid unit. Because preprocessing is inside the model, the saved `model.keras` takes raw
# pixels, and the CLI, the web app and the other notebooks cannot disagree about normalisation.
#
# **Why unfreeze only the top 60 layers (the real recipe):** with ImageNet weights, the early
# layers already detect edges and textures that X-rays share with photographs; training only the
# top of DenseNet121 adapts its high-level features with fewer parameters to fit, which suits the
# 1,272 humerus training images. The demo recipe trains every layer (`trainable_layers: -1`)
# because no ImageNet weights can be downloaded where it runs. The summary shows the head, from
# the backbone's last layer on (`model.summary()` without `layer_range` lists all 400+ layers).

# %% tags=["nbval-ignore-output"]
model = fr.build_model(cfg)
trainable, frozen = fr.count_params(model)
print(f"{model.name}: {len(model.layers)} layers, {trainable:,} trainable and {frozen:,} frozen parameters")
model.summary(layer_range=["relu", model.layers[-1].name], show_trainable=True)

# %% [markdown]
# ## Training
# `fr.train` decodes every image once (cached in `data/processed`), fits with the class-weighted
# binary cross-entropy, keeps the best epoch by validation AUC, and writes the run folder. A
# complete run of exactly this recipe (same config apart from names and folders) is reused when
# `reuse` is true, and the cell says so; otherwise you see Keras's progress bar per epoch.

# %% tags=["nbval-ignore-output"]
run_dir, reused = nb.train_or_reuse(cfg, reuse)
run = nb.load_run(str(run_dir), profile)
print(("reused the complete run " if reused else "trained ") + run.name)

# %% [markdown]
# Loss, AUC, accuracy and learning rate per epoch (training solid, validation dashed; the dotted
# line and the star mark the best epoch). You should see the training loss fall and the validation
# AUC rise; the validation curve is not smooth from epoch to epoch, which is why the best epoch,
# not the last, is the saved model.

# %% tags=["figure"]
plots.training_curves(pd.read_csv(run_dir / "history.csv"), run.metrics["best_epoch"])

# %% [markdown]
# ## Selection uses validation only
# Everything chosen about the model is chosen on the validation patients: the best epoch, and
# with `threshold = "auto"` the decision threshold (at study level, Youden's J or the lowest
# sensitivity you ask for with `target_sensitivity`). `run.threshold` is the one every reader of
# the run uses (the CLI, the web app, the other notebooks). The validation scores below are
# optimistic for that reason: they are not the result to report. Each value carries its 95 %
# bootstrap interval (patients resampled, so one patient's images move together): `0.91
# (0.87–0.94)`.

# %% tags=["nbval-ignore-output"]
print(f"best epoch {run.metrics['best_epoch']}; threshold {run.threshold:g} ({run.metrics['threshold_rule']})")
print(format_table(run.metrics["val"]))

# %% [markdown]
# ## Final evaluation on the test split, once
# MURA's own `valid` folder is our test split: it played no part in training, in picking the epoch
# or in choosing the threshold, and it is scored once, after all choices are made
# (`fr.evaluate(run, split="test")`, the same as `python -m fracture evaluate --split test`,
# stored in `metrics.json` with `final: true`). A run whose test split is already scored (`make
# demo` does it) is not scored again: looking at the test split twice and changing anything in
# between would make it a second validation set.
#
# **Why study level:** MURA labels studies, not images, and a radiologist reads all views of a
# study together; a study's probability is the mean of its images' probabilities, called abnormal
# above the threshold. Cohen's kappa measures agreement beyond chance (the paper's model reached
# 0.600 on humerus). Read the intervals before the point values: on a test split of a few hundred
# images they are several points wide, and two runs whose intervals overlap are not shown to differ.

# %% tags=["nbval-ignore-output"]
scores, now = nb.final_test_scores(run)
print(("evaluated the test split now" if now else "the test split was already evaluated")
      + f" ({scores['evaluated']}, {scores['evaluations']} evaluation(s)); threshold {scores['threshold']:g}")
print(format_table(scores))

# %% [markdown]
# **Per study type.** A run trained on several study types (`study_type="all"`, or a list such as
# `"XR_HUMERUS,XR_WRIST"`) is also scored per type, and the table takes the layout of the MURA
# paper's Table 2: one row per type, our study-level kappa with its interval beside the paper's
# model. A run on one study type, as here, says so instead.

# %% tags=["nbval-ignore-output"]
print(format_study_type_table(scores) or f"one study type in this run ({run.config.study_type}): no per-type table")

# %% [markdown]
# ROC and precision-recall curves at both levels, with the operating point at the run's threshold
# (the dot). The precision-recall curve's dotted lines are the share of abnormal images and
# studies (a model without skill): with fewer positives it tells more than the ROC does.

# %% tags=["figure"]
test = nb.predictions(run, "test")
display(plots.roc(test, run.threshold, "test"))
display(plots.precision_recall(test, run.threshold, "test"))

# %% [markdown]
# **Calibration:** does a predicted 0.8 mean 8 in 10 are abnormal? The reliability diagram bins
# the probabilities (a calibrated model follows the diagonal; the Brier score is in the legend);
# below it, the probabilities of normal and abnormal images with the threshold dashed. A
# class-weighted loss shifts probabilities up for the rarer class, so expect the curve off the
# diagonal even for a model that ranks well.

# %% tags=["figure"]
plots.calibration(test, "test", threshold=run.threshold)

# %% [markdown]
# Confusion matrices at the run's threshold, image level and study level side by side, counts
# and the share of each true class. Read the off-diagonal cells: top right are normal cases
# called abnormal, bottom left are missed abnormalities.

# %% tags=["figure"]
plots.confusion_matrices(test, run.threshold, "test")

# %% [markdown]
# ## The run folder
# Everything the other notebooks, the CLI and the web app need: the model, its resolved config,
# the history, `metrics.json` (validation scores, the threshold, the final test scores, with
# intervals), per-image predictions of each scored split, and the figures: `plots/curves.png`
# once, and `plots/val/` (written by training) and `plots/test/` (written by the final
# evaluation), so the two splits' figures never overwrite each other.

# %% tags=["nbval-ignore-output"]
nb.relative_files(run_dir)

# %% [markdown]
# ## What the real recipe costs
# An estimate, not a measurement of that run: MURA v1.1 `XR_HUMERUS` has 1,272 training images
# (587 patients); with 20 % of the patients held out for validation, an epoch trains on about
# 1,020 images and validates on about 250 (the exact split depends on the patients).
#
# - **CPU** (docs/benchmarks.md, "Training input pipeline": 2 cores of an Intel Xeon,
#   TensorFlow-CPU 2.21, DenseNet121 top 60 layers trainable, 224 px, batch 16): 8.8 img/s when
#   training and 29.9 img/s for a forward pass (the "Grad-CAM cost" section). 40 epochs ×
#   1,020 / 8.8 ≈ 4,600 s of training steps plus 40 × 250 / 29.9 ≈ 330 s of validation:
#   **about 1 h 25 min**.
# - **GPU**: not measured yet; `python benchmarks/gpu.py` measures the same top-60 training on
#   one (docs/benchmarks.md). On a GPU the decode, the per-epoch evaluation and start-up, rather
#   than the training steps, are likely to set the time.
#
# ## What to try next
# - Train on MURA: download it (docs/data.md), then `config_file = ""` and
#   `data_dir = "data/MURA-v1.1"`; ImageNet weights are downloaded once.
# - Other backbones (`backbone="ResNet50"`, `"EfficientNetB0"`...) and more or fewer trainable
#   layers; compare runs with `python -m fracture runs` or `make mlflow-ui`.
# - Other study types (`study_type="XR_WRIST"`, or `"all"`).
# - The next notebooks: `2_load` re-loads this run and predicts files; `3_visualize` shows where
#   the model looks.
