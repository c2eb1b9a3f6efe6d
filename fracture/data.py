"""Image indexes (MURA tree, class folders; COCO and YOLO via boxdata.py), patient split, decode cache, batches.

Every reader returns the same table: one row per image with columns
path, label, patient, study, study_type, split. Labels are taken from the same loop that
collects the paths, so a skipped file can never shift a label.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from pathlib import Path

import numpy as np
import pandas as pd

from fracture import diskspace, progress
from fracture.boxdata import COLUMNS, index_boxes
from fracture.config import parse_study_types
from fracture.errors import DataError, ImageError
from fracture.imageio import DECODER_VERSION, DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, is_image_file, read_gray

log = logging.getLogger(__name__)

MURA_SPLITS = {"train": "train", "valid": "test"}  # MURA's own test set is hidden: valid is our test
CACHE_FORMAT = "npy-mmap"  # part of the cache key: caches of the older .npz format are decoded afresh


def expand_image_paths(paths) -> list[Path]:
    """Image files given as files or folders (searched recursively, sorted). A file named
    explicitly is always kept (the decoder judges it by its bytes); a folder contributes its
    image files (`is_image_file`). No image file at all is a DataError."""
    files, paths = [], [Path(p) for p in paths]
    for p in paths:
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and is_image_file(f))
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"no such image or folder: {p}")
    if paths and not files:
        raise DataError(f"no image files in {', '.join(map(str, paths))} (looked for "
                        f"{' '.join(sorted(IMAGE_SUFFIXES))} and DICOM files by content)")
    return files


# --------------------------------------------------------------------------------------------
# MURA v1.1
# --------------------------------------------------------------------------------------------
def find_mura_root(data_dir) -> Path:
    """Accept either the MURA-v1.1 folder itself or a folder that contains it."""
    data_dir = Path(data_dir)
    for candidate in (data_dir, data_dir / "MURA-v1.1"):
        if (candidate / "train").is_dir() or (candidate / "valid").is_dir():
            return candidate
    raise DataError(
        f"no MURA v1.1 data at '{data_dir}'. Register at https://stanfordmlgroup.github.io/competitions/mura/, "
        "unpack MURA-v1.1.zip so that data/MURA-v1.1/train/XR_HUMERUS/... exists, "
        "or run `python -m fracture synth --out data/synthetic` and set data_dir=data/synthetic/MURA-v1.1."
    )


def _read_headerless(path: Path, names: list[str]) -> pd.DataFrame:
    return pd.read_csv(path, header=None, names=names, dtype=str, keep_default_na=False)


def _mura_rows(root: Path, folder: str, study_types: tuple[str, ...]) -> list[dict]:
    """Image rows of one MURA split; the image-paths CSV is the file list when present."""
    csv = root / f"{folder}_image_paths.csv"
    if csv.is_file():
        rel = _read_headerless(csv, ["path"])["path"]
        twice = rel[rel.map(os.path.normpath).duplicated()]
        if len(twice):  # counted twice in every score, and ensembles/cv cannot match rows by path
            raise DataError(f"{csv} lists {len(twice)} image(s) more than once, e.g. {twice.iloc[0]}: remove the "
                            "repeated rows")
        paths = [root.parent / p for p in rel]
    else:
        paths = sorted((root / folder).glob("XR_*/patient*/study*/*"))
    rows = []
    for path in paths:
        if not is_image_file(path):
            continue
        study_dir, patient_dir, type_dir = path.parent, path.parent.parent, path.parent.parent.parent
        if type_dir.name not in study_types:
            continue
        outcome = study_dir.name.rsplit("_", 1)[-1]
        if outcome not in ("positive", "negative"):
            raise DataError(f"study folder '{study_dir}' does not end in _positive or _negative")
        rows.append(
            dict(
                path=str(path),
                label=int(outcome == "positive"),
                patient=patient_dir.name,
                study=f"{root.name}/{folder}/{type_dir.name}/{patient_dir.name}/{study_dir.name}/",
                study_type=type_dir.name,
                split=MURA_SPLITS[folder],
            )
        )
    return rows


def _cross_check_studies(root: Path, folder: str, frame: pd.DataFrame) -> None:
    """Folder-name labels must agree with `<split>_labeled_studies.csv`; a conflict names the study."""
    csv = root / f"{folder}_labeled_studies.csv"
    if not csv.is_file() or frame.empty:
        return
    listed = _read_headerless(csv, ["study", "label"])
    listed_label = dict(zip(listed["study"], listed["label"].astype(int)))
    for study, label in frame.groupby("study")["label"].first().items():
        if study in listed_label and listed_label[study] != label:
            raise DataError(
                f"label conflict for study {study}: folder name says {label}, "
                f"{csv.name} says {listed_label[study]}"
            )


def index_mura(data_dir, study_type: str = "XR_HUMERUS") -> pd.DataFrame:
    root = find_mura_root(data_dir)
    study_types = parse_study_types(study_type)
    frames = []
    for folder in MURA_SPLITS:
        frame = pd.DataFrame(_mura_rows(root, folder, study_types), columns=COLUMNS)
        _cross_check_studies(root, folder, frame)
        if frame.empty:
            # Concatenating an empty (object-dtype) frame would turn the labels into objects.
            log.warning("no %s images in %s/%s/", ", ".join(study_types), root, folder)
        else:
            frames.append(frame)
    if not frames:
        raise DataError(f"no {', '.join(study_types)} images found under {root}")
    return pd.concat(frames, ignore_index=True).astype({"label": int})


# --------------------------------------------------------------------------------------------
# <root>/{train,val,test}/<class>/*.png
# --------------------------------------------------------------------------------------------
FOLDER_SPLITS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def index_folders(data_dir, positive_class: str = "fractured") -> pd.DataFrame:
    """Class-folder layout. No patient ids exist there, so each image is its own patient/study."""
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    rows, classes = [], set()
    for split_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        split = FOLDER_SPLITS.get(split_dir.name.lower())
        if split is None:
            continue
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            classes.add(class_dir.name)
            for path in sorted(class_dir.iterdir()):
                if is_image_file(path):
                    study = f"{split_dir.name}/{class_dir.name}/{path.stem}"
                    rows.append(dict(path=str(path), label=int(class_dir.name == positive_class),
                                     patient=study, study=study, study_type="", split=split))
    if positive_class not in classes:
        raise DataError(
            f"positive_class '{positive_class}' is not a class folder under {root}/<split>/ "
            f"(found: {', '.join(sorted(classes)) or 'none'}); set positive_class=<folder name>"
        )
    if len(classes) != 2:
        raise DataError(f"expected two class folders under {root}/<split>/, found {sorted(classes)}")
    return pd.DataFrame(rows, columns=COLUMNS)


# --------------------------------------------------------------------------------------------
# splits
# --------------------------------------------------------------------------------------------
def patient_folds(frame: pd.DataFrame, n_folds: int, seed: int) -> np.ndarray:
    """Fold number (0..n_folds-1) of each row: scikit-learn's StratifiedGroupKFold with the patient
    as group (no patient in two folds) and the label as stratum (each fold near the overall
    abnormal share), shuffled by `seed`."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_patients = frame["patient"].nunique()
    if n_patients < n_folds:
        raise DataError(f"{n_patients} training patients cannot fill {n_folds} patient folds: set folds= "
                        f"to at most {n_patients}, or add data")
    folds = np.full(len(frame), -1)
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, held_out) in enumerate(splitter.split(frame, frame["label"], frame["patient"])):
        folds[held_out] = k
    return folds


def split_by_patient(frame: pd.DataFrame, val_fraction: float, seed: int, fold: int = -1,
                     folds: int = 5) -> pd.DataFrame:
    """Move training *patients* to 'val' (no patient on both sides), stratified by label.

    fold=-1: fold 0 of round(1/val_fraction) patient folds (at least two, at most one per patient),
    so the validation share is the whole fraction 1/n nearest val_fraction (0.2 -> 1/5, 0.3 -> 1/3,
    0.34 -> 1/3); a layout that has its own 'val' folder keeps it.
    fold=k: fold k of `folds` (one run of `python -m fracture cv`); the pool is train plus any 'val'
    folder, so the folds of one cross-validation hold out every non-test image exactly once.
    """
    frame = frame.copy()
    cv = fold >= 0
    if not cv and (frame["split"] == "val").any():
        return frame  # the layout already has a validation split
    pool = frame["split"].isin(["train", "val"]) if cv else frame["split"] == "train"
    n_patients = frame.loc[pool, "patient"].nunique()
    if n_patients < 2:
        raise DataError("need at least two training patients to carve out a validation split")
    n_folds = folds if cv else min(n_patients, max(2, round(1 / val_fraction)))
    held_out = patient_folds(frame[pool], n_folds, seed) == max(fold, 0)
    frame.loc[pool, "split"] = np.where(held_out, "val", "train")
    return frame


def split_test_by_patient(frame: pd.DataFrame, test_fraction: float, seed: int) -> pd.DataFrame:
    """A dataset without a split of its own (split ''): fold 0 of round(1/test_fraction) patient
    folds becomes 'test', the rest 'train' (stratified by label, no patient on both sides)."""
    frame = frame.copy()
    n_patients = frame["patient"].nunique()
    if n_patients < 2:
        raise DataError("need at least two patients (or images) to carve out a test split")
    n_folds = min(n_patients, max(2, round(1 / test_fraction)))
    frame["split"] = np.where(patient_folds(frame, n_folds, seed) == 0, "test", "train")
    return frame


def load_index(cfg) -> pd.DataFrame:
    """The image table for a config: read the source, then split train/val by patient."""
    if cfg.data_format == "folders":
        frame = index_folders(cfg.data_dir, cfg.positive_class)
    elif cfg.data_format in ("coco", "yolo"):
        frame, _ = index_boxes(cfg)
        if (frame["split"] == "").any():
            frame = split_test_by_patient(frame, cfg.test_fraction, cfg.seed)
    else:
        frame = index_mura(cfg.data_dir, cfg.study_type)
    return split_by_patient(frame, cfg.val_fraction, cfg.seed, cfg.fold, cfg.folds)


def describe(frame: pd.DataFrame) -> pd.DataFrame:
    """Counts of images, studies and patients per split and label."""
    grouped = frame.groupby(["split", "label"])
    return pd.DataFrame({
        "images": grouped.size(),
        "studies": grouped["study"].nunique(),
        "patients": grouped["patient"].nunique(),
    })


# --------------------------------------------------------------------------------------------
# decoding and the decode-once cache
# --------------------------------------------------------------------------------------------
def resize(image: np.ndarray, size: int) -> np.ndarray:
    import cv2

    interpolation = cv2.INTER_AREA if max(image.shape) > size else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interpolation)


def cache_key(paths, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> str:
    """Key = ordered file list, each file's size and mtime, the target size, the decoder version
    and the pixel limit (a new decoder or limit decodes afresh instead of reusing old arrays)."""
    digest = hashlib.sha1(f"size={size} decoder={DECODER_VERSION} max_pixels={max_pixels}".encode())
    digest.update(f" format={CACHE_FORMAT}".encode())
    for p in paths:
        try:
            st = os.stat(p)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        digest.update(f"\n{p}|{stamp}".encode())
    return digest.hexdigest()[:16]



def load_images(paths, size: int, cache_dir=None,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Decode `paths` once to (N, size, size, 1) uint8 (`fracture.imageio.read_gray`, then
    `resize`); later calls read the cached array.

    With a cache_dir the images are a read-only `np.memmap` of `<key>.npy`: pages are read from
    disk when a batch indexes them, so a dataset larger than RAM trains (MURA, all seven study
    types at 320 px, is ~3.8 GB of uint8), and decoding writes straight into that file too.
    Without one they are an in-memory array.

    Returns (images, ok, skipped): `ok` marks the images that decoded, `skipped` lists the others
    with the reason. Rows stay aligned with `paths` (a failed file is a zero image with ok=False).
    """
    paths = [str(p) for p in paths]
    if not cache_dir:
        images = np.zeros((len(paths), size, size, 1), np.uint8)
        ok, reasons = _decode_into(images, paths, size, max_pixels)
        return images, ok, _skipped_frame(paths, ok, reasons)
    key = cache_key(paths, size, max_pixels)
    cache_file = Path(cache_dir) / f"{key}.npy"
    shape = (len(paths), size, size, 1)
    if not _cache_entry_ok(cache_file, key, shape):
        _decode_to_cache(cache_file, key, paths, size, max_pixels)
    images = np.load(cache_file, mmap_mode="r")
    ok = np.load(cache_file.with_suffix(".ok.npy"))
    return images, ok, _skipped_frame(paths, ok, stored_reasons(cache_file))


# A cache entry is four files: <key>.npy (the images), <key>.ok.npy (decoded or not),
# <key>.skipped.csv (why not) and <key>.check.json, written last, holding the key, the shape and
# each other file's size and sha256. The check file says "this entry is complete"; a truncated,
# garbled, foreign or bit-flipped entry fails it and is decoded again.
ENTRY_SUFFIXES = (".npy", ".ok.npy", ".skipped.csv")


def _entry_files(cache_file: Path) -> list[Path]:
    return [cache_file.with_suffix(suffix) for suffix in ENTRY_SUFFIXES]


def _check_file(cache_file: Path) -> Path:
    return cache_file.with_suffix(".check.json")


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _cache_entry_ok(cache_file: Path, key: str, shape: tuple) -> bool:
    """Whether the entry exists and passes its check file (a warning names what failed)."""
    import json

    check = _check_file(cache_file)
    if not check.is_file():
        if cache_file.is_file():
            log.warning("decode cache %s has no check file (incomplete, or from an older version): decoding the "
                        "images again", cache_file)
        return False
    try:
        stored = json.loads(check.read_text())
        problem = None
        if stored.get("key") != key or tuple(stored.get("shape", ())) != shape:
            problem = f"it belongs to other images ({check.name} records key {stored.get('key')!r})"
        for path in _entry_files(cache_file):
            if problem:
                break
            size, digest = stored["files"][path.name]
            if not path.is_file():
                problem = f"{path.name} is missing"
            elif path.stat().st_size != size:
                problem = f"{path.name} has {path.stat().st_size} bytes, {size} expected (truncated?)"
            elif _sha256(path) != digest:
                problem = f"{path.name} does not match its checksum (garbled)"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        problem = f"{check.name} cannot be read ({type(exc).__name__}: {exc})"
    if problem:
        log.warning("decode cache entry %s is damaged: %s; decoding the images again", cache_file, problem)
        return False
    return True


def _decode_to_cache(cache_file: Path, key: str, paths: list[str], size: int, max_pixels: int) -> None:
    """Decode into private temporary files, then rename them in place, the check file last: a killed
    run never leaves an entry that passes its check, and two runs (or workers) decoding the same
    files cannot collide (they write the same bytes under their own temporary names)."""
    import json

    cache_file.parent.mkdir(parents=True, exist_ok=True)
    _check_file(cache_file).unlink(missing_ok=True)  # from here on the old entry counts as gone
    private = f"{os.getpid()}.{threading.get_ident()}.tmp"
    temps = {path: path.with_name(f"{cache_file.stem}.{private}{path.name[len(cache_file.stem):]}")
             for path in [*_entry_files(cache_file), _check_file(cache_file)]}
    tmp_images, tmp_ok, tmp_skipped, tmp_check = temps.values()
    shape = (len(paths), size, size, 1)
    try:
        diskspace.require_free(cache_file.parent, int(np.prod(shape)), f"the decode cache of {len(paths)} images")
        images = np.lib.format.open_memmap(tmp_images, mode="w+", dtype=np.uint8, shape=shape)
        ok, reasons = _decode_into(images, paths, size, max_pixels)
        images.flush()
        del images  # unmap before hashing and the rename
        np.save(tmp_ok, ok)
        pd.Series(reasons, dtype=str).rename_axis("path").rename("reason").to_csv(tmp_skipped)
        files = {final.name: [tmp.stat().st_size, _sha256(tmp)] for final, tmp in temps.items() if tmp != tmp_check}
        tmp_check.write_text(json.dumps({"key": key, "shape": list(shape), "files": files}, indent=2))
        for final, tmp in temps.items():  # dict order: the check file is renamed last
            os.replace(tmp, final)
    except OSError as exc:
        raise diskspace.storage_error(exc, cache_file) or exc
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)


def _decode_into(images, paths: list[str], size: int, max_pixels: int) -> tuple[np.ndarray, dict]:
    """Fill `images` (an array or a writable memmap) row by row; (ok mask, {path: reason})."""
    ok = np.ones(len(paths), bool)
    reasons = {}
    progress = _progress(len(paths))
    for i, path in enumerate(paths):
        try:
            images[i, :, :, 0] = resize(read_gray(path, max_pixels), size)
        except ImageError as exc:
            ok[i] = False
            reasons[path] = str(exc)
            log.warning("skipping unreadable image %s: %s", path, exc)
        if progress:
            progress.update(i + 1)
    return ok, reasons


class Rows:
    """The rows `index` of a (memory-mapped) array, without copying them: `rows[idx]` reads only
    those rows. What split_arrays returns when some files were unreadable (a boolean mask on a
    memmap would copy the whole array into RAM)."""

    def __init__(self, array, index):
        self.array, self.index = array, np.asarray(index)
        self.shape = (len(self.index), *array.shape[1:])
        self.dtype, self.ndim = array.dtype, array.ndim

    def __len__(self):
        return len(self.index)

    def __getitem__(self, key):
        if isinstance(key, tuple):  # rows first, then the other axes
            return self[key[0]][(slice(None), *key[1:])]
        picked = self.index[key]
        if np.ndim(picked) == 0:
            return self.array[int(picked)]
        order = np.argsort(picked, kind="stable")  # ascending reads from the memmap, then back in order
        out = np.empty((len(picked), *self.shape[1:]), self.dtype)
        out[order] = self.array[picked[order]]
        return out

    def __array__(self, dtype=None, copy=None):  # an explicit np.asarray copies the rows, as asked
        out = self.array[self.index]
        return out if dtype is None else out.astype(dtype)


def subset_rows(images, ok: np.ndarray):
    """images[ok] without a copy of a memmap: itself when all rows are kept, else a Rows view."""
    if ok.all():
        return images
    if isinstance(images, np.memmap):
        return Rows(images, np.flatnonzero(ok))
    return images[ok]


def stored_reasons(cache_file: Path) -> dict:
    csv = cache_file.with_suffix(".skipped.csv")
    if not csv.is_file():
        return {}
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    return dict(zip(frame["path"], frame["reason"]))


def _skipped_frame(paths, ok, reasons) -> pd.DataFrame:
    bad = [p for p, good in zip(paths, ok) if not good]
    return pd.DataFrame({"path": bad, "reason": [reasons.get(p, "unreadable") for p in bad]})


def _progress(total: int):
    if total < 200 or not log.isEnabledFor(logging.INFO):
        return None

    log.info("decoding %d images once (cached for later epochs and runs)", total)
    return progress.bar(total, unit_name="image", what="decoded")


def split_arrays(frame: pd.DataFrame, cfg) -> dict:
    """Decode every split once: {split: (frame_of_readable_images, images uint8, labels)} + 'skipped'."""
    out, skipped = {}, []
    for split in ("train", "val", "test"):
        part = frame[frame["split"] == split].reset_index(drop=True)
        if part.empty:
            continue
        images, ok, bad = load_images(part["path"], cfg.image_size, cfg.cache_dir, cfg.max_pixels)
        skipped.append(bad.assign(split=split))
        part = part[ok].reset_index(drop=True)
        out[split] = (part, subset_rows(images, ok), part["label"].to_numpy(np.float32))
    out["skipped"] = pd.concat(skipped, ignore_index=True) if skipped else pd.DataFrame()
    return out


# --------------------------------------------------------------------------------------------
# batches (keras.utils.PyDataset: no TensorFlow needed on the JAX and PyTorch backends)
# --------------------------------------------------------------------------------------------
def make_batches(images, labels, batch_size: int, shuffle: bool, seed: int = 0, sample_weights=None,
                 shard: tuple[int, int] = (0, 1), pad: bool = False):
    """A keras.utils.PyDataset of float32 batches (images, labels[, sample_weights]).

    `images` may be a memmap (or data.Rows): each batch reads only its own rows, the whole array
    is never copied. shard=(index, count) is one worker's part of a data-parallel run: every
    worker shuffles the same seeded order and takes every count-th image of it, so the shards
    are disjoint and change every epoch; batch_size is then the per-worker batch, and every
    worker yields the same number of batches (the collective steps must match).
    pad=True (evaluation with a distribution) fills a short last batch with copies weighted 0,
    so every batch divides over the devices and the scores are those of the real images.
    """
    import keras

    index, count = shard
    n = len(images)

    class ArrayBatches(keras.utils.PyDataset):
        """uint8 images -> float32 batches; reshuffled every epoch when training."""

        def __init__(self):
            super().__init__()
            self.order = np.arange(n)
            self.rng = np.random.default_rng(seed)
            if shuffle:
                self.rng.shuffle(self.order)

        def __len__(self):
            return int(np.ceil(n / (batch_size * count))) if n else 0

        def __getitem__(self, position):
            mine = self.order[index::count] if count > 1 else self.order
            idx = mine[position * batch_size:(position + 1) * batch_size]
            real = len(idx)
            if (shuffle or pad) and real < batch_size:
                # Training batches are always full, topped up from the start of this epoch's order:
                # a short last batch has another shape, and TensorFlow would trace (compile) the
                # whole train step a second time for it.
                idx = np.concatenate([idx, np.resize(mine if len(mine) else self.order, batch_size - real)])
            weights = None
            if sample_weights is not None or pad:
                weights = np.ones(len(idx), np.float32) if sample_weights is None else sample_weights[idx]
                if pad:
                    weights = np.where(np.arange(len(idx)) < real, weights, 0.0).astype(np.float32)
            order = np.argsort(idx, kind="stable")  # ascending rows: sequential reads from a memmap
            idx = idx[order]
            batch = (np.asarray(images[idx], np.float32), labels[idx].reshape(-1, 1))
            if weights is not None:
                batch += (np.asarray(weights, np.float32)[order],)
            return batch

        def on_epoch_end(self):
            if shuffle:
                self.rng.shuffle(self.order)

    return ArrayBatches()


def predict_batches(images, batch_size: int):
    """A PyDataset of float32 image batches in row order, the last one padded with copies of the
    last image: one input shape, so predict is traced once; cut the outputs back to len(images).
    Reads one batch of rows at a time from a memmap (prediction on MURA never holds it all)."""
    import keras

    n = len(images)

    class ImageBatches(keras.utils.PyDataset):
        def __len__(self):
            return int(np.ceil(n / batch_size))

        def __getitem__(self, position):
            idx = np.arange(position * batch_size, (position + 1) * batch_size)
            return (np.asarray(images[np.minimum(idx, n - 1)], np.float32),)

    return ImageBatches()
