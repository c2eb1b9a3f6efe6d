"""The synthetic set in the two box-annotated layouts fracture reads (`synth --format coco|yolo`).

The images and boxes are those of fracture.synth.generate (a MURA tree written to a scratch folder
first); this module only lays them out as the public datasets ship:

- coco, as FracAtlas: images/Fractured/ and images/Non_fractured/, one COCO JSON in
  "Annotations/COCO JSON/" holding the fractured images and their boxes (category "fractured"),
  and dataset.csv with one row per image (image_id, fractured, shoulder, patient_id). No split
  files: the reader makes a seeded split, by patient_id.
- yolo, as a Roboflow export: data.yaml (names: ["humerus fracture"]), train/valid/test folders
  of images/ and labels/*.txt (`0 cx cy w h`, normalized; an empty file for a normal image). No
  patient ids, as in the Roboflow set. MURA's valid patients become test; every fifth training
  patient goes to valid.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

import pandas as pd

from fracture.data import index_mura
from fracture.errors import DataError

log = logging.getLogger(__name__)

FORMATS = ("mura", "coco", "yolo")
MARKER = ".fracture-synthetic"  # marks a folder as written here: regenerating may replace it
COCO_JSON = "Annotations/COCO JSON/COCO_fracture_masks.json"
YOLO_CLASS = "humerus fracture"


def generate_format(out_dir, fmt: str = "mura", **kwargs) -> Path:
    """Write the synthetic set in layout `fmt` under out_dir; returns the folder to set as data_dir."""
    from fracture.synth import generate  # here, not at the top: it loads cv2, which this module does not

    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if fmt == "mura":
        return generate(out_dir, **kwargs)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise DataError(f"{out} exists and is not a synthetic {fmt} set; use another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text(f"{fmt}\n")
    with tempfile.TemporaryDirectory(dir=out.parent) as scratch:
        root = generate(scratch, **kwargs)
        table = _mura_table(root)
        (write_coco if fmt == "coco" else write_yolo)(table, out)
    log.info("synthetic %s set at %s: %d images, %d fractured", fmt, out, len(table), int(table["label"].sum()))
    return out


def _mura_table(root: Path) -> pd.DataFrame:
    """One row per image of a synthetic MURA tree: path, label, patient, split, its box or None."""
    from fracture.synth import load_boxes  # here, not at the top: it loads cv2, which this module does not

    frame = index_mura(root, "all")
    boxes = load_boxes(root).set_index("path")
    frame["box"] = [tuple(int(v) for v in boxes.loc[str(Path(p).resolve()), ["x0", "y0", "x1", "y1"]])
                    if str(Path(p).resolve()) in boxes.index else None for p in frame["path"]]
    frame["study_type"] = frame["study_type"].str.removeprefix("XR_").str.lower()
    return frame


def _name(row) -> str:
    """A flat, unique file name: patient00012_study1_image2.png."""
    p = Path(row.path)
    return f"{row.patient}_{p.parent.name.split('_')[0]}_{p.stem}{p.suffix}"


def write_coco(table: pd.DataFrame, out: Path) -> None:
    import cv2

    images, annotations, rows = [], [], []
    for image_id, row in enumerate(table.itertuples(index=False), start=1):
        name = _name(row)
        folder = out / "images" / ("Fractured" if row.label else "Non_fractured")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(row.path, folder / name)
        h, w = cv2.imread(row.path, cv2.IMREAD_GRAYSCALE).shape
        rows.append(dict(image_id=name, fractured=int(row.label), shoulder=int(row.study_type == "shoulder"),
                         patient_id=row.patient))
        if row.label:  # FracAtlas's JSON holds the fractured images only
            images.append(dict(id=image_id, file_name=name, width=w, height=h))
            x0, y0, x1, y1 = row.box
            annotations.append(dict(id=len(annotations) + 1, image_id=image_id, category_id=1, iscrowd=0,
                                    bbox=[x0, y0, x1 - x0, y1 - y0], area=(x1 - x0) * (y1 - y0)))
    target = out / COCO_JSON
    target.parent.mkdir(parents=True)
    target.write_text(json.dumps({"images": images, "annotations": annotations,
                                  "categories": [{"id": 1, "name": "fractured"}]}))
    pd.DataFrame(rows).to_csv(out / "dataset.csv", index=False)


def write_yolo(table: pd.DataFrame, out: Path) -> None:
    import cv2

    for row in table.itertuples(index=False):
        number = int(row.patient.removeprefix("patient"))
        split = "test" if row.split == "test" else ("valid" if number % 5 == 0 else "train")
        name = _name(row)
        (out / split / "images").mkdir(parents=True, exist_ok=True)
        (out / split / "labels").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(row.path, out / split / "images" / name)
        line = ""
        if row.label:
            h, w = cv2.imread(row.path, cv2.IMREAD_GRAYSCALE).shape
            x0, y0, x1, y1 = row.box
            line = f"0 {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} {(x1 - x0) / w:.6f} {(y1 - y0) / h:.6f}\n"
        (out / split / "labels" / Path(name).with_suffix(".txt")).write_text(line)
    (out / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\ntest: ../test/images\n\n"
                                   f"nc: 1\nnames: ['{YOLO_CLASS}']\n")
