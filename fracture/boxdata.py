"""Box-annotated datasets: COCO JSON (FracAtlas) and YOLO exports (Roboflow) as an image table and boxes.

Both readers return (frame, boxes): the image table of fracture.data (path, label, patient, study,
study_type, split) and {resolved image path: [(x0, y0, x1, y1), ...]} holding the boxes of the
fracture classes, in pixels of the original image (x1/y1 exclusive).

- **Label**: an image is abnormal when it has at least one box of a fracture class
  (`fracture_classes`; empty = every class whose name contains "fracture", case-insensitive).
- **Splits**: the dataset's own, when every image has one: YOLO's train/valid/test folders, COCO
  files in such folders or named so, or `train.csv`/`valid.csv`/`test.csv` split files listing
  every image. Otherwise (FracAtlas's split files list only its fractured images) the split is
  left empty and fracture.data makes a seeded one.
- **Groups**: a `dataset.csv` at the root (FracAtlas ships one) joins by file name
  (`image_id`, `file_name`, `filename` or `image` column). A group column there (`group_column`,
  or automatically `patient_id`, `patient`, `subject_id`) becomes the patient, so a seeded split
  never puts one patient on both sides. Without one each image is its own patient.
- **Study type**: FracAtlas's body-part flags (hand, leg, hip, shoulder; several, or `mixed`
  -> "mixed"); empty elsewhere.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pandas as pd

from fracture.errors import DataError
from fracture.imageio import is_image_file, read_gray

log = logging.getLogger(__name__)

COLUMNS = ["path", "label", "patient", "study", "study_type", "split"]  # one row of the index (fracture.data)

SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
IMAGE_COLUMNS = ("image_id", "file_name", "filename", "image")
GROUP_COLUMNS = ("patient_id", "patient", "subject_id")
BODY_PARTS = ("hand", "leg", "hip", "shoulder")  # FracAtlas's dataset.csv flags
DATASET_CSV = "dataset.csv"


def fracture_class_names(names, wanted) -> list[str]:
    """The class names that mean "fracture": `wanted` (case-insensitive, each must exist), or by
    default every name containing "fracture". None matching is a DataError listing the names."""
    names = [str(n) for n in names]
    if wanted:
        by_lower = {n.lower(): n for n in names}
        missing = [w for w in wanted if w.lower() not in by_lower]
        if missing:
            raise DataError(f"fracture_classes {missing} are not classes of this dataset; its classes: "
                            f"{', '.join(names) or 'none'}")
        return [by_lower[w.lower()] for w in wanted]
    chosen = [n for n in names if "fracture" in n.lower()]
    if not chosen:
        raise DataError(f"no class name contains 'fracture' (classes: {', '.join(names) or 'none'}); "
                        "say which classes are fractures: fracture_classes=<name>,<name>")
    return chosen


def _split_of(path: Path, root: Path) -> str:
    """'train'/'val'/'test' from the nearest folder (or file name) between root and path named so
    ('valid/images', 'images/train', 'train.json', 'train/_annotations.coco.json'), else ''."""
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        parts = path.parts
    for part in reversed(parts):
        split = SPLIT_NAMES.get(part.split(".")[0].lower())
        if split:
            return split
    return ""


def _box(x0, y0, x1, y1, width=None, height=None) -> tuple[int, int, int, int]:
    """Float corners -> integer pixels covering them (rounded outwards, clipped, >= 1 px). A
    thousandth of a pixel is forgiven: normalized YOLO coordinates carry that much rounding."""
    ix0, iy0 = max(0, math.floor(x0 + 1e-3)), max(0, math.floor(y0 + 1e-3))
    ix1, iy1 = math.ceil(x1 - 1e-3), math.ceil(y1 - 1e-3)
    if width:
        ix0, ix1 = min(ix0, width - 1), min(ix1, width)
    if height:
        iy0, iy1 = min(iy0, height - 1), min(iy1, height)
    return ix0, iy0, max(ix1, ix0 + 1), max(iy1, iy0 + 1)


# --------------------------------------------------------------------------------------------
# dataset.csv: groups, body parts, split files
# --------------------------------------------------------------------------------------------
def _image_files(root: Path) -> dict[str, Path]:
    """{file name: path} of every image file under root (names must be unique to be joined)."""

    out, twice = {}, set()
    for path in sorted(root.rglob("*")):
        if path.is_file() and is_image_file(path):
            if path.name in out:
                twice.add(path.name)
            out[path.name] = path
    for name in twice:
        del out[name]
    return out


def _dataset_table(root: Path, group_column: str) -> pd.DataFrame | None:
    """dataset.csv indexed by file name, with columns group and study_type (either may be empty)."""
    csv = root / DATASET_CSV
    if not csv.is_file():
        if group_column:
            raise DataError(f"group_column={group_column} but there is no {csv} to read it from")
        return None
    table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    key = next((c for c in IMAGE_COLUMNS if c in table.columns), None)
    if key is None:
        raise DataError(f"{csv} has no image column ({', '.join(IMAGE_COLUMNS)}); found {', '.join(table.columns)}")
    if group_column and group_column not in table.columns:
        raise DataError(f"group_column={group_column} is not a column of {csv} ({', '.join(table.columns)})")
    group = group_column or next((c for c in GROUP_COLUMNS if c in table.columns), "")
    out = pd.DataFrame({"name": table[key].map(lambda s: Path(s).name)})
    out["group"] = table[group] if group else ""
    out["study_type"] = _body_part(table)
    out["fractured"] = table["fractured"] if "fractured" in table.columns else ""
    return out.drop_duplicates("name").set_index("name")


def _body_part(table: pd.DataFrame) -> pd.Series:
    flags = [c for c in BODY_PARTS if c in table.columns]
    if not flags:
        return pd.Series("", index=table.index)
    on = table[flags].apply(lambda col: col.astype(str).str.strip().isin(["1", "1.0", "True", "true"]))
    mixed = table["mixed"].astype(str).str.strip().isin(["1", "1.0", "True", "true"]) if "mixed" in table else False
    names = on.apply(lambda row: [c for c in flags if row[c]], axis=1)
    return pd.Series([("mixed" if len(n) > 1 or m else (n[0] if n else ""))
                      for n, m in zip(names, mixed if not isinstance(mixed, bool) else [False] * len(names))],
                     index=table.index)


def _split_files(root: Path, names: set[str]) -> dict[str, str]:
    """{file name: split} from train/valid/test .csv files listing every image, else {} (with a
    note when they list only some: FracAtlas's list its fractured images, for localization)."""
    found = {}
    for csv in sorted(root.rglob("*.csv")):
        split = SPLIT_NAMES.get(csv.stem.lower())
        if split is None:
            continue
        table = pd.read_csv(csv, dtype=str, keep_default_na=False)
        key = next((c for c in IMAGE_COLUMNS if c in table.columns), table.columns[0])
        for value in table[key]:
            found[Path(value).name] = split
    listed = names & set(found)
    if found and listed != names:
        log.warning("split files under %s list %d of the %d images; they are not used and the images are split "
                    "by seed instead", root, len(listed), len(names))
        return {}
    return found


def _finish(rows: list[dict], boxes: dict, root: Path, group_column: str, kind: str):
    """Attach dataset.csv's groups and study types, the split files' splits; warn about leakage."""

    frame = pd.DataFrame(rows, columns=COLUMNS)
    if frame.empty:
        raise DataError(f"no images found in the {kind} dataset at {root}")
    names = frame["path"].map(lambda p: Path(p).name)
    table = _dataset_table(root, group_column)
    if table is not None:
        known = names.isin(table.index)
        group = names.map(table["group"]).fillna("")
        frame.loc[known & (group != ""), "patient"] = group[known & (group != "")]
        frame.loc[known, "study_type"] = names[known].map(table["study_type"])
        flagged = names.map(table["fractured"]).fillna("").astype(str).str.strip()
        disagree = ((flagged.isin(["0", "1"])) & (flagged != frame["label"].astype(str))).sum()
        if disagree:
            log.warning("%d images of %s have a fracture box but dataset.csv says not fractured, or the reverse; "
                        "the boxes decide the label", disagree, root)
    if (frame["split"] == "").any():
        own = _split_files(root, set(names))
        if own:
            frame["split"] = names.map(own)
    if (frame["patient"] == frame["study"]).all():
        log.warning("the %s dataset at %s has no patient ids: it is split by image, so two images of one patient "
                    "may sit on both sides of a split (leakage: optimistic scores). Add a patient_id column to "
                    "%s, or name yours with group_column", kind, root, DATASET_CSV)
    else:  # a patient's images are one study: the study-level metrics then average per patient
        frame["study"] = frame["patient"]
    return frame.astype({"label": int}), boxes


def _row(path: Path, root: Path, label: int, split: str) -> dict:
    rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
    return dict(path=str(path), label=int(label), patient=rel, study=rel, study_type="", split=split)


# --------------------------------------------------------------------------------------------
# COCO
# --------------------------------------------------------------------------------------------
def _coco_files(root: Path) -> list[Path]:
    out = []
    for path in sorted(root.rglob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and {"images", "annotations", "categories"} <= set(data):
            out.append(path)
    return out


def index_coco(data_dir, fracture_classes=(), group_column: str = ""):
    """(frame, boxes) of a COCO-annotated dataset (module doc). Images listed in dataset.csv but in
    no JSON (FracAtlas lists its non-fractured images only there) are normal images."""
    root = Path(data_dir).resolve()
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    files = _coco_files(root)
    if not files:
        raise DataError(f"no COCO annotation file under {root} (a .json with images, annotations and categories). "
                        "FracAtlas: unpack it so that <data_dir>/Annotations/COCO JSON/*.json and "
                        "<data_dir>/images/ exist (docs/data.md)")
    by_name = _image_files(root)
    rows, boxes, seen = [], {}, set()
    for file in files:
        data = json.loads(file.read_text())
        categories = {c["id"]: c["name"] for c in data["categories"]}
        wanted = set(fracture_class_names(categories.values(), fracture_classes))
        split = _split_of(file, root)
        per_image = {}
        for ann in data["annotations"]:
            if categories.get(ann.get("category_id")) in wanted and len(ann.get("bbox") or ()) == 4:
                per_image.setdefault(ann["image_id"], []).append(ann["bbox"])
        for image in data["images"]:
            path = _coco_image_path(file, root, image["file_name"], by_name)
            if path is None:
                log.warning("%s: image %s not found under %s, skipped", file.name, image["file_name"], root)
                continue
            if str(path) in seen:
                continue
            seen.add(str(path))
            found = [_box(x, y, x + w, y + h, image.get("width"), image.get("height"))
                     for x, y, w, h in per_image.get(image["id"], [])]
            if found:
                boxes[str(path)] = found
            rows.append(_row(path, root, bool(found), split))
    table = _dataset_table(root, group_column)
    if table is not None:  # images only dataset.csv lists: no box, so normal
        for name in table.index:
            path = by_name.get(name)
            if path is not None and str(path) not in seen:
                seen.add(str(path))
                rows.append(_row(path, root, 0, ""))
    return _finish(rows, boxes, root, group_column, "COCO")


def _coco_image_path(json_file: Path, root: Path, file_name: str, by_name: dict) -> Path | None:
    for base in (json_file.parent, json_file.parent / "images", root, root / "images"):
        candidate = (base / file_name).resolve()
        if candidate.is_file():
            return candidate
    found = by_name.get(Path(file_name).name)
    return found.resolve() if found else None


# --------------------------------------------------------------------------------------------
# YOLO
# --------------------------------------------------------------------------------------------
def yolo_class_names(root: Path) -> list[str]:
    import yaml

    files = sorted(root.glob("*.yaml")) + sorted(root.glob("*.yml"))
    config = next((f for f in files if f.name in ("data.yaml", "data.yml")), files[0] if files else None)
    if config is None:
        raise DataError(f"no data.yaml in {root}: a YOLO export names its classes there (names: [...])")
    names = (yaml.safe_load(config.read_text()) or {}).get("names")
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names, key=int)]
    if not isinstance(names, list):
        raise DataError(f"{config} has no 'names' list of classes")
    return [str(n) for n in names]


def _label_file(image: Path) -> Path:
    """images/x.jpg -> labels/x.txt (the last 'images' folder in the path becomes 'labels')."""
    parts = list(image.parts)
    i = len(parts) - 1 - parts[::-1].index("images")
    return Path(*parts[:i], "labels", *parts[i + 1:]).with_suffix(".txt")


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size
    except Exception:  # DICOM and the like: the full decoder
        h, w = read_gray(path).shape
        return w, h


def index_yolo(data_dir, fracture_classes=(), group_column: str = ""):
    """(frame, boxes) of a YOLO export: <root>/data.yaml and images/ + labels/*.txt folders, as
    <split>/images (Roboflow) or images/<split> (Ultralytics). A label line is `class cx cy w h`
    (normalized) or a polygon `class x1 y1 x2 y2 ...` (its bounding box is used)."""

    root = Path(data_dir).resolve()
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    names = yolo_class_names(root)
    wanted = {names.index(n) for n in fracture_class_names(names, fracture_classes)}
    images = sorted(p for p in root.rglob("*") if p.is_file() and "images" in p.relative_to(root).parts
                    and is_image_file(p))
    if not images:
        raise DataError(f"no images/ folders with images under {root} (a YOLO export has train/images, "
                        "valid/images, test/images)")
    rows, boxes = [], {}
    for path in images:
        found = []
        label_file = _label_file(path)
        lines = label_file.read_text().splitlines() if label_file.is_file() else []
        size = None
        for line in lines:
            values = line.split()
            if len(values) < 5 or int(float(values[0])) not in wanted:
                continue
            size = size or _image_size(path)
            w, h = size
            numbers = [float(v) for v in values[1:]]
            if len(numbers) == 4:
                cx, cy, bw, bh = numbers
                corners = (cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h
            else:
                xs, ys = numbers[0::2], numbers[1::2]
                corners = min(xs) * w, min(ys) * h, max(xs) * w, max(ys) * h
            found.append(_box(*corners, w, h))
        if found:
            boxes[str(path)] = found
        rows.append(_row(path, root, bool(found), _split_of(path.parent, root)))
    frame, boxes = _finish(rows, boxes, root, group_column, "YOLO")
    if (frame["split"] == "").any() and (frame["split"] != "").any():
        raise DataError(f"some images under {root} are in train/valid/test folders and some are not")
    return frame, boxes


def index_boxes(cfg):
    """(frame, boxes) for data_format coco or yolo."""
    reader = index_coco if cfg.data_format == "coco" else index_yolo
    return reader(cfg.data_dir, tuple(cfg.fracture_classes), cfg.group_column)
