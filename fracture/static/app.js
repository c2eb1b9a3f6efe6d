// Upload page: choose or drop one image or a study's images, preview them, POST them to
// /api/study, show each image's probability, the study's mean and the Grad-CAM overlay.
"use strict";

const $ = (id) => document.getElementById(id);
const DICOM_NAME = /\.(dcm|dicom)$/i;

let info = null; // /api/model
let chosen = []; // [{file, url, dicom}] in upload order
let answer = null; // the last /api/study answer
let current = 0; // index of the image shown in the viewer

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function percent(p) {
  return (100 * p).toFixed(1) + " %";
}

function megabytes(bytes) {
  return (bytes / 1048576).toFixed(1) + " MB";
}

// The wording of a verdict from the server (label + uncertain flag, fracture.scores.verdict).
function verdictWords(v) {
  if (v.uncertain) return "Uncertain: leans " + v.label;
  return v.label === "abnormal" ? "Abnormal: fracture suspected" : "Normal: no fracture suspected";
}

function verdictClass(v) {
  return "label " + (v.uncertain ? "uncertain" : v.label);
}

function verdictNote(v, threshold, band, what) {
  const side = v.probability > threshold ? "above" : "at or below";
  if (v.uncertain) {
    return `${percent(v.probability)} is within ${(100 * band).toFixed(0)} points of the ${percent(threshold)} ` +
      `threshold: too close to call for ${what}. Read the ${what === "this study" ? "images" : "image"} yourself.`;
  }
  return `${percent(v.probability)} is ${side} the ${percent(threshold)} threshold (abnormal above).`;
}

async function loadModelInfo() {
  try {
    const response = await fetch("/api/model");
    info = await response.json();
    if (!response.ok) throw new Error(info.message || response.statusText);
    const test = info.metrics && info.metrics.test;
    const auc = test && test.study && test.study.auc;
    $("model-info").textContent =
      `Run ${info.run} · ${info.backbone} at ${info.image_size} px · threshold ${percent(info.threshold)}` +
      (auc != null ? ` · test study AUC ${auc.toFixed(3)}` : "");
    if (info.cam_alpha != null) {  // the server's overlay weight, so the page starts as cam_png looks
      $("opacity").value = String(Math.round(info.cam_alpha * 100));
      $("opacity").dispatchEvent(new Event("input"));
    }
    const select = $("layer");
    select.replaceChildren();
    for (const name of info.cam_layers) {
      const option = document.createElement("option");
      option.value = name;
      option.textContent = (info.cam_layer_labels && info.cam_layer_labels[name]) || name;
      option.title = "Keras layer " + name;
      select.append(option);
    }
    select.disabled = info.cam_layers.length === 0;
    if (info.report) {  // the run's report.html (python -m fracture report)
      const link = document.createElement("a");
      link.href = info.report;
      link.id = "report-link";
      link.textContent = "run report";
      $("model-info").append(" · ", link);
    }
    if (info.cam_note) {  // an exported model without Keras: probabilities only
      $("want-cam").checked = false;
      $("want-cam").disabled = true;
      $("layer-hint").textContent = info.cam_note;
    }
    $("limit").textContent = ` · up to ${info.max_study_images} files, ${info.max_upload_mb} MB in all`;
    $("band").textContent = `${(100 * info.uncertain_band).toFixed(0)} points`;
    const colors = info.cam_colormap.colors;
    $("legend-bar").style.background = `linear-gradient(to right, ${colors.join(", ")})`;
  } catch (err) {
    $("model-info").textContent = "Model information unavailable: " + err.message;
  }
}

// DICOM by name or by its "DICM" magic at byte 128; only then does the page promise a rendering.
async function looksLikeDicom(file) {
  if (DICOM_NAME.test(file.name) || file.type === "application/dicom") return true;
  if (file.size < 132) return false;
  const magic = new Uint8Array(await file.slice(128, 132).arrayBuffer());
  return String.fromCharCode(...magic) === "DICM";
}

async function choose(files) {
  files = Array.from(files || []);
  if (!files.length) return;
  showError("");
  const total = files.reduce((sum, f) => sum + f.size, 0);
  if (info && files.length > info.max_study_images) {
    showError(`${files.length} files chosen; a study takes at most ${info.max_study_images} images.`);
    return;
  }
  if (info && total > info.max_upload_mb * 1048576) {
    showError(`The files add up to ${megabytes(total)}; the limit is ${info.max_upload_mb} MB for all together.`);
    return;
  }
  for (const entry of chosen) URL.revokeObjectURL(entry.url);
  chosen = await Promise.all(files.map(async (file) => (
    { file, url: URL.createObjectURL(file), dicom: await looksLikeDicom(file) })));
  answer = null;
  $("predict").disabled = false;
  $("result").hidden = true;
  $("intro").hidden = false;
  renderFileList();
  select(0);
}

function renderFileList() {
  const list = $("file-list");
  list.replaceChildren();
  chosen.forEach((entry, i) => {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "file-button" + (i === current ? " current" : "");
    button.textContent = `${entry.file.name} (${(entry.file.size / 1024).toFixed(0)} kB)`;
    button.addEventListener("click", () => select(i));
    item.append(button);
    list.append(item);
  });
}

// Show image i in the viewer: the server's rendering and heatmap after Predict, the browser's
// own preview before.
function select(i) {
  current = i;
  renderFileList();
  for (const row of $("images-rows").children) row.classList.toggle("current", Number(row.dataset.index) === i);
  const entry = chosen[i];
  const result = answer && answer.images[i];
  const preview = $("preview");
  $("preview-caption").textContent = entry ? `Uploaded image: ${entry.file.name}` : "Uploaded image";
  if (result && result.error) {
    hidePreview(`The server could not read this file: ${result.message}`);
  } else if (result && result.image_png) {
    preview.dataset.source = "server";
    preview.src = "data:image/png;base64," + result.image_png;
  } else if (entry) {
    preview.dataset.source = "browser";
    preview.src = entry.url;
  }
  showOverlay(result);
}

function hidePreview(message) {
  $("preview").hidden = true;
  $("preview").removeAttribute("src");
  $("no-preview").hidden = false;
  $("no-preview").textContent = message;
}

function showOverlay(result) {
  const overlay = $("overlay");
  const base = $("base");
  if (result && result.heatmap_png) {
    base.src = "data:image/png;base64," + result.image_png;
    overlay.src = "data:image/png;base64," + result.heatmap_png;
    base.hidden = overlay.hidden = false;
    $("no-overlay").hidden = true;
    const name = answer.layer;
    const words = (info && info.cam_layer_labels && info.cam_layer_labels[name]) || name;
    // A file of the run's own dataset comes back with its true fracture boxes (dashed green).
    $("boxes").hidden = !result.boxes_png;
    if (result.boxes_png) $("boxes").src = "data:image/png;base64," + result.boxes_png;
    const truth = result.boxes_png ? " · dashed green: the dataset's fracture box" : "";
    $("overlay-caption").textContent = `Grad-CAM overlay · ${words} · layer ${name}${truth}`;
    return;
  }
  base.hidden = overlay.hidden = $("boxes").hidden = true;
  $("no-overlay").hidden = false;
  $("overlay-caption").textContent = "Grad-CAM overlay";
  if (!answer) $("no-overlay").textContent = "The Grad-CAM overlay appears here after Predict";
  else if (result && result.error) $("no-overlay").textContent = "No overlay: the server could not read this file";
  else $("no-overlay").textContent = "Grad-CAM was not requested";
}

function setupPreview() {
  const preview = $("preview");
  preview.addEventListener("load", () => {
    preview.hidden = false;
    $("no-preview").hidden = true;
  });
  preview.addEventListener("error", () => {
    if (!preview.getAttribute("src")) return;
    const entry = chosen[current];
    hidePreview(entry && entry.dicom
      ? "DICOM file: browsers cannot display it; the server's rendering appears after Predict"
      : "Your browser cannot display this file; after Predict the server says whether it can read it");
  });
}

function setupDrop() {
  const drop = $("drop");
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const type of ["dragleave", "drop"]) {
    drop.addEventListener(type, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    choose(event.dataTransfer.files);
  });
  $("file").addEventListener("change", (event) => choose(event.target.files));
}

function setupOpacity() {
  const slider = $("opacity");
  const apply = () => {
    $("overlay").style.opacity = String(slider.value / 100);
    $("opacity-value").textContent = `${slider.value} %`;
  };
  slider.addEventListener("input", apply);
  apply();
}

async function predict(event) {
  if (event) event.preventDefault();
  if (!chosen.length) return;
  showError("");
  const button = $("predict");
  button.disabled = true;
  button.textContent = chosen.length > 1 ? `Predicting ${chosen.length} images…` : "Predicting…";
  const query = new URLSearchParams({ image: "1" });
  if ($("want-cam").checked && !$("layer").disabled) {
    query.set("cam", "1");
    query.set("layer", $("layer").value);
  }
  const body = new FormData();
  for (const entry of chosen) body.append("files", entry.file);
  try {
    const response = await fetch("/api/study?" + query, { method: "POST", body });
    let reply;
    try {
      reply = await response.json();
    } catch {
      throw new Error(`the server answered ${response.status} ${response.statusText}`);
    }
    if (!response.ok) {
      if (reply.images) {  // no file was readable: keep the per-file reasons for the viewer
        answer = reply;
        $("result").hidden = true;
        select(current);
      }
      throw new Error(reply.message || reply.error);
    }
    answer = reply;
    showResult();
  } catch (err) {
    showError("Prediction failed: " + err.message);
  } finally {
    button.disabled = false;
    button.textContent = "Predict";
  }
}

function showResult() {
  const study = answer.study;
  const several = answer.images.length > 1;
  $("result-title").textContent = several ? `Study of ${answer.images.length} images` : "Result";
  $("probability").textContent = percent(study.probability);
  $("probability-unit").textContent = several
    ? `fracture probability of the study (mean of ${study.images} image${study.images > 1 ? "s" : ""})`
    : "fracture probability";
  const label = $("label");
  label.textContent = verdictWords(study);
  label.className = verdictClass(study);
  $("verdict-note").textContent = verdictNote(study, answer.threshold, answer.uncertain_band,
    several ? "this study" : "this image") +
    (study.failed ? ` ${study.failed} unreadable file${study.failed > 1 ? "s" : ""} left out of the mean.` : "");
  $("threshold").textContent = percent(answer.threshold) + " (abnormal above)";
  $("run").textContent = answer.run;
  $("elapsed").textContent = `${answer.elapsed_ms} ms on the server`;
  renderImageRows(several);
  $("intro").hidden = true;
  $("result").hidden = false;
  select(Math.min(current, answer.images.length - 1));
}

function renderImageRows(several) {
  const rows = $("images-rows");
  rows.replaceChildren();
  $("images-table").hidden = !several;
  if (!several) return;
  answer.images.forEach((image, i) => {
    const row = document.createElement("tr");
    row.dataset.index = String(i);
    row.tabIndex = 0;
    row.addEventListener("click", () => select(i));
    row.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); select(i); } });
    const name = document.createElement("td");
    name.className = "name";
    if (image.image_png) {
      const thumb = document.createElement("img");
      thumb.className = "thumb";
      thumb.alt = "";
      thumb.src = "data:image/png;base64," + (image.cam_png || image.image_png);
      name.append(thumb);
    }
    name.append(document.createTextNode(image.name || `file ${i + 1}`));
    const probability = document.createElement("td");
    const verdict = document.createElement("td");
    const pill = document.createElement("span");
    if (image.error) {
      probability.textContent = "–";
      pill.className = "label unreadable";
      pill.textContent = "Unreadable";
      pill.title = image.message;
      const reason = document.createElement("span");
      reason.className = "reason";
      reason.textContent = image.message;
      name.append(reason);
    } else {
      probability.textContent = percent(image.probability);
      pill.className = verdictClass(image);
      pill.textContent = image.uncertain ? "Uncertain" : image.label === "abnormal" ? "Abnormal" : "Normal";
    }
    verdict.append(pill);
    row.append(name, probability, verdict);
    rows.append(row);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  setupPreview();
  setupDrop();
  setupOpacity();
  $("form").addEventListener("submit", predict);
  $("layer").addEventListener("change", () => { if (answer && answer.study) predict(); });
  loadModelInfo();
});
