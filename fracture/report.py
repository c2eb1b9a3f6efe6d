"""`python -m fracture report`: one self-contained HTML document per run, for a reviewer or a paper.

    python -m fracture report --run saved_models/<run>     # -> <run>/report.html

The sections follow the items that checklists for medical-imaging AI ask for (CLAIM, TRIPOD+AI,
model cards): data, reference standard, model, training, evaluation, failure analysis,
explainability, intended use and limitations, reproducibility. Each section is built from what
the run folder (and, for data counts, the dataset) holds; a section whose source is missing says
which command produces it instead of staying silently empty. Figures are embedded as PNG data
URIs: the file opens offline, and nothing is fetched from anywhere.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import platform
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np
import pandas as pd

from fracture import tracking
from fracture.cam import maps_and_logits, overlay
from fracture.cam.checks import cam_layers
from fracture.cam.sanity import PASS_BELOW, verdicts
from fracture.data import find_mura_root, load_index, resize
from fracture.errors import FractureError
from fracture.fileio import atomic_write_text
from fracture.imageio import read_gray
from fracture.machine import git_commit
from fracture.plots import new_figure
from fracture.scores import is_abnormal
from fracture.tracking import read_run_id

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
MISSING_CLASS = "missing"  # the note a section shows when its source does not exist (the test reads it)
METRIC_KEYS = ("auc", "sensitivity", "specificity", "accuracy", "kappa")
VERSIONED = ("keras", "tensorflow-cpu", "tensorflow", "jax", "torch", "numpy", "scikit-learn", "mlflow",
             "opencv-python-headless", "onnxruntime")


@dataclass
class Section:
    id: str
    title: str
    claim: str  # the checklist items it answers
    body: str  # HTML
    has_data: bool  # whether the run folder (or data) holds this section's source


# --------------------------------------------------------------------------------------------
# small HTML helpers
# --------------------------------------------------------------------------------------------
def esc(value) -> str:
    return html.escape(str(value))


def missing(text: str) -> str:
    return f'<p class="{MISSING_CLASS}">{esc(text)}</p>'


def table(frame: pd.DataFrame, caption: str = "", digits: int = 3) -> str:
    def cell(v):
        if isinstance(v, (float, np.floating)):
            return "–" if not np.isfinite(v) else f"{v:.{digits}f}"
        return esc(v)

    head = "".join(f"<th>{esc(c)}</th>" for c in frame.columns)
    rows = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>"
                   for row in frame.itertuples(index=False))
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    # in a scrolling box: a wide table scrolls inside the page instead of widening it
    return f'<div class="wide"><table>{cap}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>'


def facts(pairs) -> str:
    """A definition list of (term, value) pairs, values escaped."""
    return "<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in pairs) + "</dl>"


def png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figure(path_or_bytes, caption: str, alt: str | None = None) -> str:
    data = Path(path_or_bytes).read_bytes() if isinstance(path_or_bytes, (str, Path)) else path_or_bytes
    return (f'<figure><img src="{png_data_uri(data)}" alt="{esc(alt or caption)}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def fig_png(fig, dpi: int = 110) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# sections
# --------------------------------------------------------------------------------------------
def _index(cfg):
    """The dataset's image table as training split it, or (None, reason) when it cannot be read."""
    try:
        return load_index(cfg), ""
    except (FractureError, OSError) as exc:
        return None, f"the dataset at {cfg.data_dir} cannot be read here ({exc})"


def is_synthetic(cfg) -> bool:
    """A tree written by `fracture synth` (it carries the boxes file MURA lacks)."""
    from fracture.synth import BOXES_CSV  # here, not at the top: it loads cv2, which this module does not

    try:
        return (find_mura_root(cfg.data_dir) / BOXES_CSV).is_file()
    except (FractureError, OSError):
        return False


def data_section(run, frame, reason: str) -> Section:
    cfg, metrics = run.config, run.metrics
    synthetic = is_synthetic(cfg)
    parts = [facts([
        ("Source", f"{cfg.data_dir} ({cfg.data_format} layout; study types {cfg.study_type})"
                   + (" — synthetic images made by `fracture synth`, not patients" if synthetic else "")),
        ("Dates", "MURA and the synthetic trees carry no acquisition dates; the run completed "
                  f"{_completed(run)}"),
        ("Patient split", f"train/val carved by patient (val_fraction={cfg.val_fraction}, seed={cfg.seed}, "
                          f"fold={cfg.fold}); test is the dataset's own held-out folder"),
    ])]
    has_data = False
    if frame is not None:
        has_data = True
        keys = ["split", "study_type", "label"] if frame["study_type"].nunique() > 1 else ["split", "label"]
        grouped = frame.groupby(keys)
        counts = pd.DataFrame({"images": grouped.size(), "studies": grouped["study"].nunique(),
                               "patients": grouped["patient"].nunique()}).reset_index()
        counts["label"] = counts["label"].map({0: "normal", 1: "abnormal"})
        counts["split"] = counts["split"].replace({"valid": "test"})
        parts.append(table(counts, "Images, studies and patients per split and class"))
        patients = {s: set(frame.loc[frame["split"] == s, "patient"]) for s in frame["split"].unique()}
        pairs = [(a, b) for i, a in enumerate(sorted(patients)) for b in sorted(patients)[i + 1:]]
        shared = pd.DataFrame([{"splits": f"{a} ∩ {b}", "patients in both": len(patients[a] & patients[b])}
                               for a, b in pairs])
        parts.append(table(shared, "Leakage check: patients in two splits (must be 0)"))
    else:
        parts.append(missing(f"Counts per split from metrics.json only: {reason}."))
        if metrics.get("counts"):
            has_data = True
            parts.append(table(pd.DataFrame([metrics["counts"]]), "Images per split (decoded)"))
    skipped = run.path / "skipped.csv"
    if skipped.is_file():
        frame_skipped = pd.read_csv(skipped)
        parts.append(table(frame_skipped.head(50), f"Skipped files ({len(frame_skipped)}) and why")
                     if len(frame_skipped) else "<p>No file was skipped: every listed image decoded.</p>")
    return Section("data", "Data", "CLAIM: data sources, eligibility, data partitions, missing data; "
                   "TRIPOD+AI: participants", "".join(parts), has_data)


def reference_section(run) -> Section:
    cfg = run.config
    boxes = is_synthetic(cfg)
    text = ("<p>Labels are MURA's study labels: each study folder is marked positive (abnormal) or negative "
            "by the radiologists who built MURA; every image inherits its study's label. Study-level scores "
            "average the images' probabilities (MURA protocol).</p>")
    if cfg.data_format == "folders":
        text = (f"<p>Labels come from the folder layout: images under '{esc(cfg.positive_class)}' are "
                "positive; no study grouping beyond the folders.</p>")
    if boxes:
        text += ("<p>Fracture boxes: the synthetic generator draws each crack and writes its box "
                 "(fracture_boxes.csv); the CAM localization scores use them. MURA itself has no boxes.</p>")
    return Section("reference", "Reference standard", "CLAIM: ground truth, its source and rationale",
                   text, True)


def model_section(run) -> Section:
    from fracture.model import PREPROCESS_LAYERS  # here, not at the top: it loads Keras, which this module does not

    cfg, model, metrics = run.config, run.model, run.metrics
    weights = cfg.weights
    if weights.lower() == "imagenet":
        try:
            # here, not at the top: it loads Keras, which this module does not
            from fracture.weights import imagenet_source

            weights += f" (Keras applications, {imagenet_source(cfg.backbone)[0]})"
        except Exception:  # the origin is a nicety; the name is the fact
            weights += " (Keras applications' no-top ImageNet weights)"
    layers = [(layer.name, type(layer).__name__) for layer in model.layers if layer.name in PREPROCESS_LAYERS]
    body = facts([
        ("Backbone", f"{cfg.backbone}, input {model.input_shape[1]}×{model.input_shape[2]} px gray, "
                     f"pooling {cfg.pooling}, head {cfg.dense_units} ({cfg.dense_activation}, dropout {cfg.dropout})"),
        ("Weights", weights),
        ("Trainable layers", f"{cfg.trainable_layers} (-1: all); batch-norm momentum {cfg.batchnorm_momentum}"),
        ("Parameters", f"{metrics.get('trainable_params', '?'):,} trainable, {metrics.get('frozen_params', '?'):,} frozen"
         if isinstance(metrics.get("trainable_params"), int) else "not recorded"),
        ("Precision", cfg.precision),
        ("Output", "sigmoid probability of 'abnormal'"),
    ]) + table(pd.DataFrame(layers, columns=["layer", "type"]),
               "Preprocessing inside the model (augmentation layers act only while training)")
    summary = run.path / "model_summary.txt"
    if summary.is_file():
        text = summary.read_text()
        body += f"<details><summary>Keras model summary ({len(text.splitlines())} lines)</summary><pre>{esc(text)}</pre></details>"
    return Section("model", "Model", "CLAIM: model description, software, initialization", body, True)


def training_section(run) -> Section:
    cfg, metrics = run.config, run.metrics
    pairs = [
        ("Optimizer", f"{cfg.optimizer}, learning rate {cfg.learning_rate}"
                      + (f", momentum {cfg.momentum}" if cfg.momentum else "")),
        ("Schedule", f"learning rate × {cfg.gamma} per epoch"
                     + (f"; reduce on plateau after {cfg.plateau_patience} epochs" if cfg.plateau_patience else "")),
        ("Loss", "binary cross-entropy" + (", class-weighted" if cfg.class_weighting else "")
         + (f" (weights {metrics['class_weights']})" if metrics.get("class_weights") else "")),
        ("Batch, epochs", f"batch {cfg.batch_size}; {metrics.get('epochs_run', '?')} of {cfg.epochs} epochs run"
                          + (f"; early stopping patience {cfg.early_stopping}" if cfg.early_stopping else "")),
        ("Augmentation", f"flip {cfg.flip}, rotation {cfg.rotation}°, zoom {cfg.zoom}, translate {cfg.translate}"),
        ("Selection rule", "the epoch with the highest validation AUC (image level); the test split is never used"),
        ("Best epoch", metrics.get("best_epoch", "not recorded")),
        ("Training time", f"{metrics.get('train_seconds', '?')} s "
                          f"({metrics.get('train_images_per_second', '?')} images/s)"),
    ]
    curves = run.path / "plots" / "curves.png"
    history = run.path / "history.csv"
    body = facts(pairs)
    if curves.is_file():
        body += figure(curves, "Training curves: loss, AUC, accuracy, learning rate; the best epoch marked")
    elif history.is_file():
        body += table(pd.read_csv(history), "Per-epoch history")
    else:
        body += missing("No history.csv or curves.png in the run folder.")
    return Section("training", "Training", "CLAIM: training details, selection of the final model", body,
                   curves.is_file() or history.is_file())


def score_table(scores: dict) -> pd.DataFrame:
    rows = []
    for level in ("image", "study"):
        m = scores.get(level)
        if not isinstance(m, dict):
            continue
        row = {"level": level, "n": int(m["n"])}
        for key in METRIC_KEYS:
            ci = m.get(f"{key}_ci")
            value = m.get(key, float("nan"))
            row[key] = (f"{value:.3f} ({ci[0]:.3f}–{ci[1]:.3f})" if ci
                        else ("–" if value is None or not np.isfinite(value) else f"{value:.3f}"))
        rows.append(row)
    return pd.DataFrame(rows)


def evaluation_section(run) -> Section:
    from fracture.evaluation import score_frame  # here, not at the top: it loads sklearn, which this module does not

    metrics = run.metrics
    parts = [facts([("Threshold", f"{run.threshold:.3f}: {metrics.get('threshold_rule', 'fixed by the config')} "
                                  "(chosen on validation, never on test)"),
                    ("Intervals", "95 % bootstrap over patients (images and studies of one patient move together)")])]
    has_data = False
    for split in ("val", "test"):
        scores = metrics.get(split)
        if not isinstance(scores, dict):
            parts.append(missing(f"No {split} scores: run `python -m fracture evaluate --run {run.path} "
                                 f"--split {split}`."))
            continue
        has_data = True
        role = ("final, held-out report: evaluated " + str(scores.get("evaluated", "?"))
                + f", {scores.get('evaluations', 1)} time(s)") if split == "test" else "selection (validation)"
        parts.append(f"<h3>{'Test' if split == 'test' else 'Validation'} split — {esc(role)}</h3>")
        parts.append(table(score_table(scores), f"{split}: image and study level"))
        notes = [m.get("ci_note") for m in scores.values() if isinstance(m, dict) and m.get("ci_note")]
        parts += [f"<p class='note'>{esc(n)}</p>" for n in notes]
        predictions = run.path / f"predictions_{split}.csv"
        if predictions.is_file():
            frame = pd.read_csv(predictions)
            if "study_type" in frame and frame["study_type"].nunique() > 1:
                rows = []
                for kind, part in frame.groupby("study_type"):
                    per = score_frame(part, run.threshold)
                    rows += [{"study type": kind, **r} for r in score_table(per).to_dict("records")]
                parts.append(table(pd.DataFrame(rows), f"{split}: per study type (no intervals)"))
        for name, what in (("roc.png", "ROC"), ("precision_recall.png", "Precision-recall"),
                           ("calibration.png", "Calibration (reliability diagram)"),
                           ("confusion_matrix.png", "Confusion matrices at the threshold")):
            path = run.path / "plots" / split / name
            if path.is_file():
                parts.append(figure(path, f"{split}: {what}"))
    return Section("evaluation", "Evaluation", "CLAIM: metrics, uncertainty, internal testing; TRIPOD+AI: "
                   "performance", "".join(parts), has_data)


def failure_cases(frame: pd.DataFrame, threshold: float, k: int) -> dict[str, pd.DataFrame]:
    """The k most confident misses: false negatives with the lowest probability, false positives
    with the highest (image level, at the run's threshold)."""
    predicted = is_abnormal(frame["probability"].to_numpy(), threshold)
    misses_fn = frame[(frame["label"] == 1) & ~predicted].sort_values("probability", ascending=True)
    misses_fp = frame[(frame["label"] == 0) & predicted].sort_values("probability", ascending=False)
    return {"false negatives": misses_fn.head(k), "false positives": misses_fp.head(k)}


def failure_figure(run, cases: pd.DataFrame, title: str):
    """The cases' X-rays with their Grad-CAM overlays (fracture class), or None when unreadable."""
    layers = cam_layers(run.model, run.config.backbone)
    if not layers or not len(cases):
        return None
    size = int(run.model.input_shape[1])
    grays = []
    for path in cases["path"]:
        try:
            grays.append(resize(read_gray(path, run.config.max_pixels), size))
        except (FractureError, OSError):
            return None
    x = np.stack(grays).astype(np.float32)[..., None]
    maps, _ = maps_and_logits(run.model, x, layers[0], "gradcam")
    fig = new_figure(2.2 * len(grays), 2.6)
    axes = fig.subplots(1, len(grays), squeeze=False)[0]
    for ax, gray, heat, (_, row) in zip(axes, grays, maps, cases.iterrows()):
        ax.imshow(overlay(gray, heat, "jet", 0.4))
        ax.set_title(f"p = {row['probability']:.3f}\n{Path(row['path']).parent.name}", fontsize=7)
        ax.axis("off")
    fig.suptitle(f"{title}: Grad-CAM ({layers[0]}) over the X-ray", fontsize=9)
    return fig_png(fig), layers[0]


def failures_section(run, k: int) -> Section:
    split = "test" if (run.path / "predictions_test.csv").is_file() else "val"
    predictions = run.path / f"predictions_{split}.csv"
    if not predictions.is_file():
        return Section("failures", "Failure analysis", "CLAIM: failure analysis", missing(
            "No predictions file: run `python -m fracture evaluate`."), False)
    frame = pd.read_csv(predictions)
    parts = [f"<p>Most confident errors on the {split} split at threshold {run.threshold:.3f} (image level).</p>"]
    for title, cases in failure_cases(frame, run.threshold, k).items():
        if not len(cases):
            parts.append(f"<p>No {title} on {split}.</p>")
            continue
        shown = cases.assign(study=cases["path"].map(lambda p: str(Path(p).parent.name)))
        parts.append(table(shown[["path", "study", "probability"]], f"{title} ({split})", digits=4))
        try:
            drawn = failure_figure(run, cases, title)
        except Exception as exc:  # a CAM failure must not lose the rest of the report
            log.warning("CAM overlays for the %s failed: %s", title, exc)
            drawn = None
        if drawn:
            parts.append(figure(drawn[0], f"{title}: the model's most confident {title} with Grad-CAM "
                                          f"({drawn[1]}); warm = raised the fracture probability"))
        else:
            parts.append(missing(f"CAM overlays for the {title}: images not readable here."))
    return Section("failures", "Failure analysis", "CLAIM: failure analysis of incorrectly classified cases",
                   "".join(parts), True)


def explainability_section(run, cam_out) -> Section:
    parts, has_data = [], False
    panels = sorted((Path(cam_out) / run.name).glob("*/panel.png"))[:4]
    for panel in panels:
        parts.append(figure(panel, f"CAM panel: {panel.parent.name}"))
    sanity, evaluation = run.path / "cam_sanity.csv", run.path / "cam_eval.csv"
    if sanity.is_file():
        frame = pd.read_csv(sanity)
        rows = [{"method": m, "layer": layer, "spearman, all randomized": rho,
                 "verdict": f"{'passes' if ok else 'FAILS'} (needs < {PASS_BELOW})"}
                for (m, layer), (rho, ok) in verdicts(frame).items()]
        parts.append(table(pd.DataFrame(rows), "Sanity check (weights randomized top-down; the map must change)"))
        plot = run.path / "plots" / "cam_sanity.png"
        if plot.is_file():
            parts.append(figure(plot, "Sanity cascade"))
    if evaluation.is_file():
        # columns a run did not compute (the ROAD and deletion/insertion curves after `--steps 0`) are left out
        parts.append(table(pd.read_csv(evaluation).dropna(axis=1, how="all"), "Localization (pointing game, energy in box: higher is better) "
                                                     "and faithfulness (deletion AUC lower, insertion higher)"))
    has_data = bool(panels) or sanity.is_file() or evaluation.is_file()
    if not panels:
        parts.append(missing(f"No CAM panels in {cam_out}/{run.name}/: `python -m fracture cam --run {run.path}`."))
    if not sanity.is_file():
        parts.append(missing(f"No sanity check: `python -m fracture cam --sanity --run {run.path}`."))
    if not evaluation.is_file():
        parts.append(missing(f"No localization scores: `python -m fracture cam --evaluate --run {run.path}`."))
    return Section("explainability", "Explainability", "CLAIM: methods for explainability or interpretability",
                   "".join(parts), has_data)


def intended_use_section(run, synthetic: bool) -> Section:
    body = ("<p class='warning'><strong>Research use only. Not a medical device.</strong> Not cleared or approved "
            "for clinical use; never the sole basis of a diagnosis.</p>"
            "<ul><li>Task: flag humerus radiographs (MURA XR_HUMERUS studies) as normal or abnormal, "
            "for research on detection and its explanations.</li>"
            "<li>Inputs outside the training distribution (other body parts, children, other devices, "
            "post-operative hardware) were not evaluated.</li>"
            "<li>Class activation maps show where the score came from, not where a fracture is; "
            "read them with the sanity and localization scores above.</li>"
            "<li>Intervals from one dataset say nothing about other hospitals: external validation is needed.</li></ul>")
    if synthetic:
        body = ("<p class='warning' id='synthetic-warning'><strong>Synthetic data.</strong> This run was trained "
                "and evaluated on images drawn by `fracture synth`, not on patients: its scores say the pipeline "
                "works, not how the model would do on radiographs.</p>") + body
    return Section("intended-use", "Intended use and limitations", "CLAIM: limitations, implications for "
                   "practice; model card: intended use", body, True)


def reproducibility_section(run) -> Section:
    cfg = run.config
    commit, dirty = git_commit()
    versions = []
    for name in VERSIONED:
        try:
            versions.append((name, importlib_metadata.version(name)))
        except importlib_metadata.PackageNotFoundError:
            pass
    recorded = read_run_id(run.path)
    import keras

    name = f"{run.name}-reproduced"
    command = (f"python -m fracture train --config {run.path / 'config.yaml'} run_name={name}\n"
               f"python -m fracture evaluate --run {Path(cfg.runs_dir) / name} --split test")
    body = facts([
        ("Commit (report written from)", f"{commit}{' with uncommitted changes' if dirty else ''}"),
        ("MLflow run", f"{recorded[0]} in {recorded[1]}" if recorded else "not tracked"),
        ("Machine", f"{_cpu_model()}; {platform.platform()}; Python {platform.python_version()}"),
        ("Keras backend", keras.backend.backend()),
        ("Seeds", f"seed={cfg.seed} (patient split, initialization, augmentation, bootstrap)"),
    ]) + table(pd.DataFrame(versions, columns=["package", "version"]), "Versions") \
        + f"<p>Reproduce:</p><pre>{esc(command)}</pre>" \
        + f"<details open><summary>config.yaml</summary><pre>{esc((run.path / 'config.yaml').read_text())}</pre></details>"
    return Section("reproducibility", "Reproducibility", "CLAIM: software, code availability; TRIPOD+AI: "
                   "open science", body, True)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _completed(run) -> str:
    from fracture.resume import MARKER  # here, not at the top: it loads Keras, which this module does not

    marker = run.path / MARKER
    if marker.is_file():
        return json.loads(marker.read_text()).get("completed", "?")
    return datetime.fromtimestamp((run.path / "model.keras").stat().st_mtime).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------
# the document
# --------------------------------------------------------------------------------------------
STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1d2430;max-width:62rem;margin:2rem auto;padding:0 1.2rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{border-bottom:2px solid #d6dbe3;padding-bottom:.2rem;margin-top:2.2rem}
.claim{color:#5b6576;font-size:.85rem;margin-top:-.6rem}nav ol{columns:2}
table{border-collapse:collapse;margin:.8rem 0;font-size:.9rem}caption{text-align:left;font-weight:600;padding:.3rem 0}
th,td{border:1px solid #cfd5de;padding:.25rem .55rem;text-align:left;vertical-align:top}th{background:#eef1f5}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1rem}dt{font-weight:600}dd{margin:0}
figure{margin:1rem 0}img{max-width:100%;height:auto;border:1px solid #e1e5eb}figcaption{font-size:.85rem;color:#5b6576}
pre{background:#f5f7fa;padding:.6rem;overflow-x:auto;font-size:.8rem}
.wide{overflow-x:auto;max-width:100%}
.warning{background:#fff4e5;border-left:4px solid #e8590c;padding:.5rem .8rem}
.missing{color:#8a5a00;background:#fffbea;padding:.3rem .6rem;border-left:3px solid #f0c000}
.note{color:#5b6576;font-size:.85rem}
@media print{nav{display:none}h2{break-after:avoid}figure,table{break-inside:avoid}}
"""


def sections(run, cam_out="layer_outputs", failures: int = 3) -> list[Section]:
    frame, reason = _index(run.config)
    synthetic = is_synthetic(run.config)
    return [data_section(run, frame, reason), reference_section(run), model_section(run), training_section(run),
            evaluation_section(run), failures_section(run, failures), explainability_section(run, cam_out),
            intended_use_section(run, synthetic), reproducibility_section(run)]


def render(run, parts: list[Section]) -> str:
    test = run.metrics.get("test", {}) if isinstance(run.metrics.get("test"), dict) else {}
    study = test.get("study", {})
    headline = (f"test study AUC {study['auc']:.3f}"
                + (f" (95 % CI {study['auc_ci'][0]:.3f}–{study['auc_ci'][1]:.3f})" if study.get("auc_ci") else "")
                + f", n = {study['n']} studies" if isinstance(study.get("auc"), float) and np.isfinite(study["auc"])
                else "no final test evaluation yet")
    nav = "".join(f'<li><a href="#{s.id}">{esc(s.title)}</a></li>' for s in parts)
    body = "".join(f'<section id="{s.id}" data-has-data="{str(s.has_data).lower()}"><h2>{esc(s.title)}</h2>'
                   f'<p class="claim">{esc(s.claim)}</p>{s.body}</section>' for s in parts)
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Run report: {esc(run.name)}</title>'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{STYLE}</style></head><body>'
            f'<header><h1>Run report: {esc(run.name)}</h1><p>{esc(run.config.backbone)} at '
            f'{run.model.input_shape[1]} px · {esc(headline)} · threshold {run.threshold:.3f} · written '
            f'{datetime.now().isoformat(timespec="seconds")} by <code>python -m fracture report</code></p>'
            f'<p class="warning">Research use only; not a medical device.</p></header>'
            f'<nav><ol>{nav}</ol></nav><main>{body}</main></body></html>')


def write_report(run, cam_out="layer_outputs", failures: int = 3) -> Path:
    path = run.path / REPORT_FILE
    atomic_write_text(path, render(run, sections(run, cam_out, failures)))
    return path


def cli_report(args) -> None:
    from fracture.runs import load_run  # here, not at the top: it loads Keras, which this module does not

    run = load_run(args.run)
    path = write_report(run, args.cam_out, args.failures)
    logged = tracking.log_artifacts(run.path, [path])
    print(f"report: {path}{' (and in its MLflow run)' if logged else ''}")
