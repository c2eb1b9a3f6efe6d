// Upload page: choose or drop an image, preview it, POST it to /api/predict, show the answer.
"use strict";

const $ = (id) => document.getElementById(id);
let chosen = null; // the File to send
let previewUrl = null;
let maxBytes = Infinity;

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function formatPercent(p) {
  return (100 * p).toFixed(1) + " %";
}

async function loadModelInfo() {
  try {
    const response = await fetch("/api/model");
    const info = await response.json();
    if (!response.ok) throw new Error(info.message || response.statusText);
    const test = info.metrics && info.metrics.test;
    const auc = test && test.study && test.study.auc;
    $("model-info").textContent =
      `Run ${info.run} · ${info.backbone} at ${info.image_size} px · threshold ${info.threshold}` +
      (auc != null ? ` · test study AUC ${auc.toFixed(3)}` : "");
    const select = $("layer");
    select.replaceChildren();
    for (const name of info.cam_layers) {
      const option = document.createElement("option");
      option.value = option.textContent = name;
      select.append(option);
    }
    select.disabled = info.cam_layers.length === 0;
    maxBytes = info.max_upload_mb * 1024 * 1024;
    $("limit").textContent = `, up to ${info.max_upload_mb} MB`;
  } catch (err) {
    $("model-info").textContent = "Model information unavailable: " + err.message;
  }
}

function choose(file) {
  if (!file) return;
  showError("");
  if (file.size > maxBytes) {
    showError(`${file.name} is ${(file.size / 1048576).toFixed(1)} MB; the limit is ${maxBytes / 1048576} MB.`);
    return;
  }
  chosen = file;
  $("file-name").textContent = `${file.name} (${(file.size / 1024).toFixed(0)} kB)`;
  $("predict").disabled = false;
  $("result").hidden = true;
  $("overlay").hidden = true;
  $("no-overlay").hidden = false;
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = URL.createObjectURL(file);
  const preview = $("preview");
  preview.dataset.failed = "";
  preview.src = previewUrl; // DICOM will not render here: onerror asks the server for a rendering
}

function setupPreview() {
  const preview = $("preview");
  preview.addEventListener("load", () => {
    if (preview.src.startsWith("blob:")) preview.dataset.failed = "";
    preview.hidden = false;
    $("no-preview").hidden = true;
  });
  preview.addEventListener("error", () => {
    preview.dataset.failed = "1";
    preview.hidden = true;
    $("no-preview").hidden = false;
    $("no-preview").textContent = "No browser preview for this file (e.g. DICOM): the server's rendering appears after Predict";
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
    choose(event.dataTransfer.files[0]);
  });
  $("file").addEventListener("change", (event) => choose(event.target.files[0]));
}

async function predict(event) {
  event.preventDefault();
  if (!chosen) return;
  showError("");
  const button = $("predict");
  button.disabled = true;
  button.textContent = "Predicting…";
  const wantCam = $("want-cam").checked && !$("layer").disabled;
  const query = new URLSearchParams();
  if (wantCam) {
    query.set("cam", "1");
    query.set("layer", $("layer").value);
  }
  if ($("preview").dataset.failed) query.set("image", "1");
  const body = new FormData();
  body.append("file", chosen);
  try {
    const response = await fetch("/api/predict?" + query, { method: "POST", body });
    let answer;
    try {
      answer = await response.json();
    } catch {
      throw new Error(`the server answered ${response.status} ${response.statusText}`);
    }
    if (!response.ok) throw new Error(answer.message || answer.error);
    showResult(answer);
  } catch (err) {
    showError("Prediction failed: " + err.message);
  } finally {
    button.disabled = false;
    button.textContent = "Predict";
  }
}

function showResult(answer) {
  $("probability").textContent = formatPercent(answer.probability);
  const label = $("label");
  label.textContent = answer.label === "abnormal" ? "Abnormal: fracture suspected" : "Normal: below the threshold";
  label.className = "label " + answer.label;
  $("threshold").textContent = formatPercent(answer.threshold) + " (abnormal above)";
  $("run").textContent = answer.run;
  $("elapsed").textContent = `${answer.elapsed_ms} ms on the server`;
  $("result").hidden = false;
  if (answer.image_png) $("preview").src = "data:image/png;base64," + answer.image_png;
  const overlay = $("overlay");
  if (answer.cam_png) {
    overlay.src = "data:image/png;base64," + answer.cam_png;
    overlay.hidden = false;
    $("no-overlay").hidden = true;
    $("overlay-caption").textContent = `Grad-CAM overlay, layer ${answer.layer}`;
  } else {
    overlay.hidden = true;
    $("no-overlay").hidden = false;
    $("no-overlay").textContent = "Grad-CAM was not requested";
  }
}

document.addEventListener("DOMContentLoaded", () => {
  setupPreview();
  setupDrop();
  $("form").addEventListener("submit", predict);
  loadModelInfo();
});
