"""The synthetic MURA tree: layout and CSVs as in MURA v1.1, boxes, determinism, and a crack that
is really in its box and survives the downscale the demo trains at."""
import pathlib
import re

import cv2
import numpy as np
import pytest

from fracture import synth
from fracture.errors import DataError, FractureError

STUDY = r"MURA-v1\.1/(train|valid)/XR_HUMERUS/patient(\d{5})/study\d+_(positive|negative)/"
IMAGE_RE = re.compile(STUDY + r"image\d+\.png")
STUDY_RE = re.compile(f"({STUDY}),([01])")  # groups: study, split, patient, label word, label


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    base = tmp_path_factory.mktemp("synth")
    root = synth.generate(base, patients=12, seed=3, max_size=128, min_size=64)
    return base, root


def read_lines(path):
    text = path.read_text()
    assert text.endswith("\n")
    return text.splitlines()


def listed_images(root):
    return {split: read_lines(root / f"{split}_image_paths.csv") for split in ("train", "valid")}


def test_layout_and_csv_formats(tree):
    base, root = tree
    assert root == base / "MURA-v1.1"
    images = listed_images(root)
    for split, lines in images.items():
        assert lines, split
        for line in lines:  # header-less: every line, the first included, is a path of this split
            m = IMAGE_RE.fullmatch(line)
            assert m and m[1] == split, line
            img = cv2.imread(str(base / line), cv2.IMREAD_UNCHANGED)
            assert img is not None and img.dtype == np.uint8 and img.ndim == 2, line
            assert 64 <= img.shape[0] <= 128 and img.shape[1] <= img.shape[0]  # portrait
        studies = read_lines(root / f"{split}_labeled_studies.csv")
        assert studies
        for line in studies:
            m = STUDY_RE.fullmatch(line)
            assert m and m[2] == split, line
            assert m[5] == ("1" if m[4] == "positive" else "0"), line
            assert (base / m[1]).is_dir()
        # Studies and images agree both ways: no study without images, no image without a study.
        study_dirs = {STUDY_RE.fullmatch(s)[1] for s in studies}
        assert study_dirs == {p.rsplit("/", 1)[0] + "/" for p in lines}
    on_disk = {str(p.relative_to(base)) for p in root.rglob("*.png")}
    assert on_disk == set(images["train"]) | set(images["valid"])
    assert len(on_disk) == len(images["train"]) + len(images["valid"])  # no duplicates


def test_patients_disjoint_and_nested(tree):
    _, root = tree
    images = listed_images(root)
    patients = {s: {IMAGE_RE.fullmatch(p)[2] for p in lines} for s, lines in images.items()}
    assert not patients["train"] & patients["valid"]
    assert len(patients["valid"]) == 3 and len(patients["train"]) == 9  # 25 % of 12 patients
    all_paths = images["train"] + images["valid"]
    per_study = {}
    for p in all_paths:
        per_study[p.rsplit("/", 1)[0]] = per_study.get(p.rsplit("/", 1)[0], 0) + 1
    per_patient = {}
    for s in per_study:
        pid = s.split("/")[3]
        per_patient[pid] = per_patient.get(pid, 0) + 1
    assert max(per_study.values()) > 1 and max(per_patient.values()) > 1
    assert max(per_study.values()) <= 4 and max(per_patient.values()) <= 3
    labels = {IMAGE_RE.fullmatch(p)[3] for p in all_paths}
    assert labels == {"positive", "negative"}


def test_boxes_exactly_for_positives_and_in_bounds(tree):
    base, root = tree
    lines = read_lines(root / "fracture_boxes.csv")
    assert lines[0] == "path,x0,y0,x1,y1"
    rows = [line.split(",") for line in lines[1:]]
    images = listed_images(root)
    positives = {p for lines_ in images.values() for p in lines_ if "_positive/" in p}
    assert rows and {r[0] for r in rows} == positives and len(rows) == len(positives)
    for path, *coords in rows:
        x0, y0, x1, y1 = map(int, coords)
        h, w = cv2.imread(str(base / path), cv2.IMREAD_GRAYSCALE).shape
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h, (path, coords, (h, w))
        # A crack box is about a bone width: neither a dot nor the whole film.
        assert 0.005 < (x1 - x0) * (y1 - y0) / (w * h) < 0.35, (path, coords, (h, w))


def test_load_boxes_gives_absolute_existing_paths(tree):
    _, root = tree
    df = synth.load_boxes(root)
    assert list(df.columns) == ["path", "x0", "y0", "x1", "y1"] and len(df)
    assert all(pathlib.Path(p).is_absolute() and pathlib.Path(p).is_file() for p in df["path"])
    assert all(df[c].dtype.kind == "i" for c in ["x0", "y0", "x1", "y1"])
    with pytest.raises(DataError, match="fracture_boxes.csv not found"):
        synth.load_boxes(root / "train")


def tree_bytes(root):
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def test_deterministic_for_a_seed(tmp_path):
    kw = dict(patients=6, max_size=96, min_size=64)
    a = tree_bytes(synth.generate(tmp_path / "a", seed=7, **kw))
    b = tree_bytes(synth.generate(tmp_path / "b", seed=7, **kw))
    c = tree_bytes(synth.generate(tmp_path / "c", seed=8, **kw))
    assert a == b
    assert a != c


def test_regenerate_replaces_own_tree_but_never_a_real_one(tmp_path):
    synth.generate(tmp_path, patients=8, seed=0, max_size=64, min_size=48)
    root = synth.generate(tmp_path, patients=2, seed=1, max_size=64, min_size=48)
    listed = {l for s in listed_images(root).values() for l in s}
    assert {str(p.relative_to(tmp_path)) for p in root.rglob("*.png")} == listed  # nothing stale
    real = tmp_path / "real" / "MURA-v1.1" / "train"
    real.mkdir(parents=True)
    (real / "keep.png").write_bytes(b"x")
    with pytest.raises(DataError, match="not a synthetic tree"):
        synth.generate(tmp_path / "real", patients=2)
    assert (real / "keep.png").exists()


SEEDS = range(6)


@pytest.mark.parametrize("seed", SEEDS)
def test_label_changes_only_the_crack(seed):
    # Same seed, both labels: same film, same box; outside the box only the displaced fragment's
    # outline may move, so no global cue (brightness, size, noise) tells the classes apart.
    pos, box = synth._make_image(seed, True, 128, 256)
    neg, box_neg = synth._make_image(seed, False, 128, 256)
    assert pos.shape == neg.shape and box == box_neg
    diff = np.abs(pos.astype(np.int16) - neg.astype(np.int16))
    inside = np.zeros(diff.shape, bool)
    inside[box[1]:box[3], box[0]:box[2]] = True
    assert (diff[~inside] > 3).mean() < 0.15
    assert diff[inside].mean() > 3 * diff[~inside].mean()


@pytest.mark.parametrize("seed", SEEDS)
def test_crack_gap_is_inside_its_box_and_visible_at_128px(seed):
    p = synth._sample(np.random.default_rng(seed), 256, 512)
    p["shift"] = 0.0  # the gap alone, so its footprint is not mixed with the fragment's move
    with_gap, without = synth._render(p, crack=True), synth._render(p, crack=False)
    x0, y0, x1, y1 = synth._box(p)
    dark = without.astype(np.float32) - with_gap.astype(np.float32)
    assert dark[y0:y1, x0:x1].sum() > 0.95 * np.abs(dark).sum()
    # After the demo's downscale the gap still darkens the bone by many grey levels.
    h, w = dark.shape
    small = (cv2.resize(without, (128, 128), interpolation=cv2.INTER_AREA).astype(np.float32)
             - cv2.resize(with_gap, (128, 128), interpolation=cv2.INTER_AREA))
    assert small.max() > 25
    sy, sx = np.unravel_index(np.argmax(small), small.shape)
    assert x0 <= (sx + 0.5) * w / 128 <= x1 and y0 <= (sy + 0.5) * h / 128 <= y1


def test_sizes(tmp_path):
    # A max_size below the default min_size (the CLI passes only --max-size) lowers min_size.
    root = synth.generate(tmp_path, patients=2, max_size=48)
    shapes = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE).shape for p in root.rglob("*.png")]
    assert shapes and all(max(s) <= 48 for s in shapes)
    with pytest.raises(FractureError, match="too small"):
        synth.generate(tmp_path / "tiny", patients=2, max_size=8)
