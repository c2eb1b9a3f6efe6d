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
LEVELS = ["easy", "medium", "hard"]


def in_box_share_and_mean(seed, level):
    """Share of the absolute pixel change (positive vs the same film without the crack) inside
    the box, and the mean change per box pixel; computed here from the two images and the box."""
    difficulty = synth.parse_difficulty(level)
    pos, box = synth._make_image(seed, True, 128, 320, difficulty)
    neg, box_neg = synth._make_image(seed, False, 128, 320, difficulty)
    assert pos.shape == neg.shape and box == box_neg
    diff = np.abs(pos.astype(np.float64) - neg.astype(np.float64))
    x0, y0, x1, y1 = box
    assert diff.sum() > 0, (seed, level)  # the crack changes something
    return diff[y0:y1, x0:x1].sum() / diff.sum(), diff[y0:y1, x0:x1].mean()


@pytest.mark.parametrize("level", LEVELS)
def test_fracture_is_local_to_its_box(level):
    # Localization ground truth: the label changes pixels only where the box says;
    # the old whole-fragment shift left 74-85 % of the change outside the box.
    shares = [in_box_share_and_mean(seed, level)[0] for seed in range(40)]
    assert min(shares) >= 0.9, (level, np.argmin(shares), min(shares))


def test_harder_levels_change_the_box_less():
    means = {level: np.mean([in_box_share_and_mean(seed, level)[1] for seed in range(20)]) for level in LEVELS}
    assert means["easy"] > means["medium"] > means["hard"] > 0, means


def test_difficulty_touches_only_the_positives(tmp_path):
    # Every draw happens in the same order at every level, so negatives are byte-identical and
    # the level is the only difference between two trees.
    kw = dict(patients=6, seed=2, max_size=96, min_size=64)
    easy = tree_bytes(synth.generate(tmp_path / "easy", **kw))
    hard = tree_bytes(synth.generate(tmp_path / "hard", difficulty="hard", **kw))
    assert easy.keys() == hard.keys()
    changed = {k for k in easy if easy[k] != hard[k]}
    positives = {k for k in easy if "_positive/" in k}
    assert positives and changed == positives | {"fracture_boxes.csv"}


def test_parse_difficulty_levels_overrides_and_errors():
    assert synth.parse_difficulty("medium") == synth.DIFFICULTY["medium"]
    assert synth.parse_difficulty("shift=0.1-0.2")["gap"] == synth.DIFFICULTY["easy"]["gap"]
    got = synth.parse_difficulty("hard, gap=0.02, hairline=1")
    assert got["gap"] == (0.02, 0.02) and got["hairline"] == 1.0 and got["depth"] == synth.DIFFICULTY["hard"]["depth"]
    assert synth.parse_difficulty({"shift": "0.2-0.3"})["shift"] == (0.2, 0.3)
    for bad, match in [("brutal", "unknown difficulty"), ("easy,width=2", "unknown difficulty key"),
                       ("easy,shift=a-b", "shift=low-high"), ("easy,shift=0.5-0.2", "low <= high"),
                       ("easy,hairline=2", "hairline in")]:
        with pytest.raises(FractureError, match=match):
            synth.parse_difficulty(bad)
    with pytest.raises(FractureError, match="unknown difficulty"):
        synth.generate("/nonexistent/never-written", patients=2, difficulty="brutal")


def test_hairline_cracks_are_thin_and_not_stepped():
    rng_seeds = range(30)
    plain = [synth._sample(np.random.default_rng(s), 256, 512, synth.parse_difficulty("hard,hairline=0")) for s in rng_seeds]
    hair = [synth._sample(np.random.default_rng(s), 256, 512, synth.parse_difficulty("hard,hairline=1")) for s in rng_seeds]
    for a, b in zip(plain, hair):
        assert b["shift"] == 0.0 and a["shift"] != 0.0
        assert b["gap"] == pytest.approx(synth.HAIRLINE_GAP * a["gap"])
        assert {k: v for k, v in a.items() if k not in ("gap", "shift")} == {
            k: v for k, v in b.items() if k not in ("gap", "shift")}


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


def test_cli_difficulty(tmp_path, capsys):
    from fracture.cli import main

    kw = ["--patients", "3", "--seed", "4", "--max-size", "64"]
    assert main(["synth", "--out", str(tmp_path / "a"), "--difficulty", "hard", *kw]) == 0
    synth.generate(tmp_path / "b", patients=3, seed=4, max_size=64, difficulty="hard")
    assert tree_bytes(tmp_path / "a" / "MURA-v1.1") == tree_bytes(tmp_path / "b" / "MURA-v1.1")
    assert main(["synth", "--out", str(tmp_path / "c"), "--difficulty", "hard,width=1", *kw]) == 2
    assert "unknown difficulty key 'width'" in capsys.readouterr().err


def test_marker_box_holds_every_marker_pixel_and_markers_are_listed_for_both_classes(tmp_path):
    found = 0
    for seed in range(40):
        p = synth._sample(np.random.default_rng(seed), 128, 320)
        if not p["marker"][0]:
            assert synth._marker_box(p) is None
            continue
        found += 1
        with_marker = synth._render(p, crack=False).astype(np.int16)
        without = synth._render({**p, "marker": (False, *p["marker"][1:])}, crack=False).astype(np.int16)
        changed = np.argwhere(with_marker != without)
        x0, y0, x1, y1 = synth._marker_box(p)
        assert len(changed) and (changed[:, 1] >= x0).all() and (changed[:, 1] < x1).all()
        assert (changed[:, 0] >= y0).all() and (changed[:, 0] < y1).all()
        assert (x1 - x0) * (y1 - y0) < 0.05 * p["H"] * p["W"]  # a marker, not the film
    assert found >= 10
    root = synth.generate(tmp_path, patients=12, seed=3, max_size=96, min_size=64)
    listed = synth.load_distractor_boxes(root)
    assert set(listed["kind"]) == {"marker"}
    labels = {"_positive/" in p for p in listed["path"]}
    assert labels == {True, False}  # drawn whatever the label
    assert all(pathlib.Path(p).is_file() for p in listed["path"])
    assert synth.load_distractor_boxes(tmp_path / "nowhere").empty
