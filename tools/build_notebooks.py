"""Writes notebooks/*.ipynb from the cell lists below (then `make notebooks` executes them).

Keeping the cells here makes notebook changes reviewable as plain diffs; the notebooks stay
thin: every code cell calls the `fracture` package, none defines a function or class.
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
IGNORE = "# NBVAL_IGNORE_OUTPUT\n# (numbers change from run to run)\n"


def md(text):
    return new_markdown_cell(text.strip())


def code(text, tags=()):
    cell = new_code_cell(text.strip())
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


STARTUP = "# NBVAL_IGNORE_OUTPUT\n# (the backend prints start-up log lines with timestamps)\n"
SETUP = code(STARTUP + """
import fracture as fr
from fracture import notebook as nb

cfg = nb.config(PARAMS)
""")

TRAIN = [
    md("""
# 1 · Train a humerus fracture detector

This notebook trains the repo's default recipe (DenseNet121 with three dense layers on top, top 60
layers trainable, MURA v1.1 `XR_HUMERUS`, batch 16, 40 epochs) and evaluates it the MURA way: per
image and per study (a study's probability is the mean of its images'), with Cohen's kappa.

Run it on the real data once `data/MURA-v1.1` exists (see `data/README.md`). With
`FRACTURE_NOTEBOOK_PROFILE=smoke` it runs a tiny synthetic configuration instead; that is how CI
executes it and how the stored outputs below were made.
"""),
    md("## Parameters\nThe real recipe. Any key of `fracture.Config` may be added here."),
    code("""
PARAMS = dict(
    data_dir="data/MURA-v1.1",  # the MURA v1.1 folder (or a class-folder root with data_format="folders")
    study_type="XR_HUMERUS",
    backbone="DenseNet121",
    weights="imagenet",  # needs ~/.keras/models/densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5
    image_size=224,
    batch_size=16,
    epochs=40,
    trainable_layers=60,
)
""", tags=["parameters"]),
    md("## Setup\nThe parameters become a checked `Config`; an unknown key or a bad value stops here "
       "with a message naming it. You should see which profile is active."),
    SETUP,
    code('print("profile:", nb.profile())\n'
         '{key: getattr(cfg, key) for key in ("data_dir", "image_size", "batch_size", "epochs", "weights", '
         '"trainable_layers")}'),
    md("## Data\nOne table row per image: path, label (from the study folder), patient, study, "
       "study type and split. MURA's `valid` is our test set; validation patients are carved out of "
       "`train`. You should see image, study and patient counts per split and class."),
    code("""
frame = fr.load_index(cfg)
fr.describe_data(frame)
"""),
    md("A few training images with their labels and patients:"),
    code("nb.show_samples(frame, cfg)"),
    md("The split is by patient, so no patient's images appear on both sides. You should see zero shared patients."),
    code("""
patients = frame.groupby("split")["patient"].agg(set)
print("patients per split:", {split: len(p) for split, p in patients.items()})
print("patients in both train and val:", len(patients["train"] & patients["val"]))
print("patients in both train and test:", len(patients["train"] & patients["test"]))
"""),
    md("## Model\nOne flat Keras graph: raw grayscale pixels, augmentation (training only), "
       "grayscale→RGB, the backbone's own `preprocess_input`, the backbone, three dense layers and one "
       "sigmoid unit. You should see the parameter counts and the first and last unfrozen layers."),
    code("""
model = fr.build_model(cfg)
trainable, frozen = fr.count_params(model)
unfrozen = fr.unfrozen_layers(model)
print(f"{model.name}: {len(model.layers)} layers, {trainable:,} trainable and {frozen:,} frozen parameters")
print(f"{len(unfrozen)} unfrozen backbone layers with weights, from {unfrozen[0]} to {unfrozen[-1]}")
"""),
    md("## Training\n`fr.train` decodes every image once (cached in `data/processed`), fits with "
       "class-weighted binary cross-entropy, keeps the best epoch by validation AUC, and writes the run "
       "folder. You should see one line per epoch."),
    code(IGNORE + """
nb.fresh_run(cfg)  # smoke profile only: replaces the previous smoke run
run_dir = fr.train(cfg)
"""),
    md("Loss and AUC per epoch, training (solid) and validation (dashed):"),
    code('nb.show_pngs([run_dir / "plots" / "curves.png"], width=8)'),
    md("## Evaluation\nThe best model on the test split, per image and per study (MURA protocol). "
       "On the synthetic smoke data after two epochs these numbers mean little; on MURA humerus the "
       "paper's model reached kappa 0.600."),
    code(IGNORE + """
run = fr.load_run(run_dir)
fr.summary_table(run.metrics["test"])
"""),
    code('nb.show_pngs([run_dir / "plots" / "roc.png", run_dir / "plots" / "confusion_matrix.png"])'),
    md("## The run folder\nEverything the other notebooks, the CLI and the web app need. You should see "
       "the model, its config, history, metrics, predictions and plots."),
    code("""
print(run_dir)
nb.relative_files(run_dir)
"""),
]

LOAD = [
    md("""
# 2 · Load a trained run

Load a run folder written by the train notebook (or `python -m fracture train`), check that it
reproduces its stored test metrics, predict single images from file paths, and see how MURA's study
level is built from image probabilities. The saved model takes raw pixels: preprocessing is inside it.
"""),
    md("## Parameters\n`run` empty means the newest run in `saved_models/`."),
    code("""
PARAMS = dict(
    run="",  # e.g. "saved_models/20261123-101500-densenet121"
)
""", tags=["parameters"]),
    md("## Setup\nYou should see the profile, the run and its model's input size."),
    SETUP,
    code("""
run = fr.load_run(nb.run_path(PARAMS))
print("profile:", nb.profile(), "| run:", run.path)
print("backbone:", run.config.backbone, "| input:", run.model.input_shape, "| threshold:", run.config.threshold)
"""),
    md("## Re-evaluate\nThe test split is read again from the run's data source and scored. You should "
       "see the table and confirmation that it equals what training stored."),
    code(IGNORE + """
scores = fr.evaluate(run, write=False)
fr.summary_table(scores)
"""),
    code("""
stored = run.metrics["test"]
same = all(abs(scores[level][key] - stored[level][key]) < 1e-6
           for level in ("image", "study") for key in ("accuracy", "auc", "kappa", "sensitivity", "specificity"))
print("re-evaluation equals the stored metrics:", same)
"""),
    md("## Predict single images\nAny image file (PNG, JPEG, DICOM) or folder. You should see one "
       "row per image with its probability and label at the run's threshold."),
    code("""
predictions = fr.load_index(run.config).query("split == 'test'")
paths = predictions["path"].head(4).tolist()
print(len(paths), "images")
"""),
    code(IGNORE + "fr.predict_paths(run, paths)"),
    md("## Study level\nMURA scores a study by the mean of its images' probabilities. Here is the study "
       "with the most images: its images, then the study row."),
    code("""
import pandas as pd

test = pd.read_csv(run.path / "predictions_test.csv")
study = test.groupby("study").size().idxmax()
images_of_study = test[test["study"] == study]
print(study, "-", len(images_of_study), "images")
"""),
    code(IGNORE + """
display(images_of_study[["path", "label", "probability"]])
fr.study_level(images_of_study)
"""),
]

VISUALIZE = [
    md("""
# 3 · What does the network look at?

Class activation maps (Grad-CAM, Grad-CAM++, LayerCAM, HiResCAM, Score-CAM) on early, middle and
late layers, feature-map grids, and on synthetic data (where each fracture's box is known) a score of
how well the maps find the fracture. Files land in `layer_outputs/<run>/<image>/`.
"""),
    md("## Parameters\nLayers are DenseNet121 names: inside a dense block, transition blocks, the last ReLU."),
    code("""
PARAMS = dict(
    run="",  # empty = newest run in saved_models/
    layers=["conv3_block2_1_relu", "pool3_relu", "pool4_relu", "relu"],
    methods=["gradcam", "gradcampp", "layercam", "hirescam", "scorecam"],
    images=4,  # how many test images (both classes)
)
""", tags=["parameters"]),
    md("## Setup\nYou should see the profile and the run."),
    code(STARTUP + """
import matplotlib.pyplot as plt

import fracture as fr
from fracture import cam
from fracture import notebook as nb
"""),
    code("""
run = fr.load_run(nb.run_path(PARAMS))
print("profile:", nb.profile(), "| run:", run.path)
"""),
    md("## CAM panels\nFor each image: the original, the prediction, and one overlay per layer and "
       "method (jet colormap, alpha 0.4). You should see the list of files written."),
    code("""
paths = cam.default_images(run, n=PARAMS["images"])
written = cam.render(run, paths, PARAMS["layers"], PARAMS["methods"])
sorted(str(p) for p in written if p.name.startswith("panel"))
"""),
    code('nb.show_pngs([p for p in written if p.name.startswith("panel")][:2], width=12)'),
    md("## Maps as arrays\n`cam.cam_maps` returns `(B, H, W)` maps per layer at the input resolution, "
       "normalised to [0, 1]. You should see their shapes and ranges."),
    code("""
images = fr.load_images(paths, run.config.image_size)[0]
maps = cam.cam_maps(run.model, images, PARAMS["layers"], method="gradcam")
{layer: (m.shape, round(float(m.min()), 3), round(float(m.max()), 3)) for layer, m in maps.items()}
"""),
    md("## Feature maps\nThe channels of a layer's activation as a grid (what the original notebooks' "
       "`layer outputs` folder showed)."),
    code("""
grid = cam.feature_grid(run.model, images[0], "pool3_relu")
plt.figure(figsize=(8, 8))
plt.imshow(grid)
plt.axis("off")
plt.show()
"""),
    md("## Do the maps find the fracture?\nOn synthetic data the fracture box of every positive test "
       "image is known. Pointing game: share of images whose map maximum falls in the box. Energy in box: "
       "share of the map inside the box. Deletion/insertion: area under the probability curve as the most "
       "important pixels are removed (lower is better) or added (higher is better). `method=random` is a "
       "random map. The smoke model is barely trained; `docs/cam.md` has the demo model's numbers."),
    code(IGNORE + """
table = cam.evaluate_localization(run, PARAMS["methods"], ["relu", "pool4_relu"])
table
"""),
    code("print(sorted(table.columns), (run.path / 'cam_eval.csv').is_file())"),
]


def write(name, cells):
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nbformat.write(nb, NOTEBOOKS / name)


if __name__ == "__main__":
    write("1_train.ipynb", TRAIN)
    write("2_load.ipynb", LOAD)
    write("3_visualize.ipynb", VISUALIZE)
