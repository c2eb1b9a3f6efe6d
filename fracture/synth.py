"""Synthetic MURA v1.1 tree: radiograph-like long bones, some with a displaced shaft fracture.

The real MURA cannot be downloaded from here (registration), so tests, notebooks and the demo run
on this stand-in. It copies MURA's folder layout and CSV formats exactly, so the same loader reads
both, and adds `fracture_boxes.csv` (MURA has no boxes) so CAMs can be checked against the truth.

Every random draw of an image happens in the same order whatever its label and the crack is the
only thing the label changes: size, contrast, rotation, position and distractors have identical
distributions in both classes, so a model can only score by finding the crack.

The crack is local, so its box is valid localization ground truth: the fragments step sideways at
the crack line and are back in line one shaft radius away (not a whole fragment shifted), and at
least 90 % of the pixel change a positive carries lies inside its box (tests/test_synth.py). How
hard the crack is to see (width, contrast, step, share of hairline cracks) is the `difficulty`
(DIFFICULTY levels, `python -m fracture synth --difficulty`); the draws, and so the films and the
negatives, are the same at every level.
"""
import logging
import math
import pathlib
import shutil
import time

import cv2
import numpy as np
import pandas as pd

from fracture.errors import DataError, FractureError

log = logging.getLogger(__name__)

ROOT_NAME = "MURA-v1.1"
BOXES_CSV = "fracture_boxes.csv"
# Boxes of things on a film that are not the pathology but draw a model's eye: here the lead side
# marker ("L"/"R"). A real dataset may supply the same file for its markers, rulers and text
# (columns path,kind,x0,y0,x1,y1; one row per box, several per image allowed).
DISTRACTORS_CSV = "distractor_boxes.csv"

# How hard the crack is to see. gap: crack width as a fraction of the image height (it scales with
# the film so it survives the downscale to the model's size); depth: how much of the bone's density
# the gap removes (contrast); shift: sideways step between the fragments as a fraction of the shaft
# radius (displacement); hairline: share of positives whose crack is a hairline (gap x 0.35, no
# step). Each is a (low, high) range drawn per image, hairline a probability.
DIFFICULTY = {
    "easy": {"gap": (0.035, 0.05), "depth": (0.9, 1.0), "shift": (0.6, 0.9), "hairline": 0.0},
    "medium": {"gap": (0.02, 0.035), "depth": (0.65, 0.9), "shift": (0.3, 0.6), "hairline": 0.1},
    "hard": {"gap": (0.012, 0.022), "depth": (0.4, 0.65), "shift": (0.1, 0.3), "hairline": 0.4},
}
HAIRLINE_GAP = 0.35  # a hairline crack's width relative to the drawn gap


def _chord(radius, v):
    """Path length of a ray at offset v through a cylinder: how much tissue an X-ray crosses."""
    return 2.0 * np.sqrt(np.maximum(radius * radius - v * v, 0.0))


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _texture(seed, h, w, scale):
    """Smooth random field in about [-1, 1] with blobs of roughly `scale` px."""
    small = np.random.default_rng(seed).standard_normal(
        (max(2, int(h / scale * 2)), max(2, int(w / scale * 2))), np.float32)
    return np.clip(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC) / 2, -1, 1)


def parse_difficulty(text) -> dict:
    """"medium" or "medium,shift=0.2-0.4,hairline=0.5" or a dict -> a full DIFFICULTY entry.

    The first item may name a level (default "easy"); key=value items override its ranges
    (low-high, or one number for both ends)."""
    if isinstance(text, dict):
        items, level = [f"{k}={v}" for k, v in text.items()], "easy"
    else:
        items = [t.strip() for t in str(text).split(",") if t.strip()]
        level = items.pop(0) if items and "=" not in items[0] else "easy"
    if level not in DIFFICULTY:
        raise FractureError(f"unknown difficulty {level!r}; use one of {', '.join(DIFFICULTY)}")
    out = dict(DIFFICULTY[level])
    for item in items:
        key, _, value = item.partition("=")
        key = key.strip()
        if key not in out:
            raise FractureError(f"unknown difficulty key {key!r}; use {', '.join(DIFFICULTY['easy'])}")
        try:
            if key == "hairline":
                out[key] = float(value)
            else:
                lo, _, hi = str(value).strip().partition("-")
                out[key] = (float(lo), float(hi or lo))
        except ValueError:
            raise FractureError(f"difficulty {item!r}: write {key}=low-high, e.g. shift=0.3-0.6") from None
    ranges = [out[k] for k in out if k != "hairline"]
    if not 0 <= out["hairline"] <= 1 or any(lo > hi or lo < 0 for lo, hi in ranges):
        raise FractureError(f"difficulty {text!r}: ranges need 0 <= low <= high, hairline in [0, 1]")
    return out


def _sample(rng, min_size, max_size, difficulty=None):
    """Draw all parameters of one image; the crack's are drawn for negatives too (module doc)."""
    level = difficulty or DIFFICULTY["easy"]
    p = {}
    p["H"] = h = int(rng.integers(min_size, max_size + 1))  # portrait: height is the long side
    p["W"] = w = max(8, int(round(h * rng.uniform(0.55, 1.0))))
    p["L"] = rng.uniform(0.75, 1.05) * h  # bone length; ends may run off the film as in MURA
    p["R"] = r = min(rng.uniform(0.05, 0.07) * h, 0.13 * w)  # shaft radius
    p["theta"] = np.deg2rad(rng.uniform(-25, 25))
    p["head"] = 1.0 if rng.random() < 0.8 else -1.0  # humeral head mostly at the top
    p["k_head"], p["k_distal"] = rng.uniform(1.7, 2.1), rng.uniform(1.6, 2.0)
    p["cortex"] = rng.uniform(0.25, 0.35)  # cortex thickness / shaft radius
    p["T"] = r * rng.uniform(2.3, 3.3)  # soft-tissue half width
    p["T_wave"] = rng.uniform(0, 0.15), rng.uniform(1.5, 4.0) / p["L"], rng.uniform(0, 2 * np.pi)
    p["T_off"] = rng.uniform(-0.4, 0.4) * r
    # Crack: where along the shaft, its obliquity and jaggedness, gap and sideways step. Gap and
    # step scale with the image so they survive the demo's downscale to ~128 px.
    p["uc"] = rng.uniform(-0.25, 0.25) * p["L"]
    p["phi"] = np.deg2rad(rng.uniform(-30, 30))
    p["jag"] = (rng.uniform(0.05, 0.12) * r, rng.uniform(1.5, 3.0) / r, rng.uniform(0, 2 * np.pi),
                rng.uniform(4.0, 7.0) / r, rng.uniform(0, 2 * np.pi))
    p["gap"] = rng.uniform(*level["gap"]) * h
    p["gap_depth"] = rng.uniform(*level["depth"])
    p["shift"] = rng.choice([-1.0, 1.0]) * rng.uniform(*level["shift"]) * r
    # Place the bone so that the crack site (and a bone width around it) is always on the film.
    uc, st, ct = p["uc"], np.sin(p["theta"]), np.cos(p["theta"])
    for _ in range(20):
        cx, cy = w * rng.uniform(0.4, 0.6), h * rng.uniform(0.42, 0.58)
        kx, ky = cx + uc * st, cy + uc * ct
        if 2 * r <= kx <= w - 2 * r and 2 * r <= ky <= h - 2 * r:
            break
    else:  # rare (very narrow film, steep angle): fall back to the centre for both classes alike
        p["uc"], cx, cy = 0.0, w / 2, h / 2
    p["cx"], p["cy"] = cx, cy
    # Harmless look-alikes, in both classes: a faint nutrient canal along the shaft and a faint
    # growth-plate line across an epiphysis, so "any dark line" is not the answer.
    p["canal"] = rng.random() < 0.4, rng.uniform(-0.3, 0.3) * p["L"], rng.uniform(-0.6, 0.6) * r
    p["physis"] = rng.random() < 0.3, rng.choice([-1.0, 1.0]) * rng.uniform(0.36, 0.42) * p["L"]
    p["levels"] = rng.uniform(0.03, 0.1), rng.uniform(0.2, 0.35), rng.uniform(0.45, 0.65)
    p["tilt"] = tuple(rng.uniform(-0.06, 0.06, size=2))  # heel effect: a gentle brightness slope
    p["gamma"], p["lo"], p["hi"] = rng.uniform(0.7, 1.4), rng.uniform(0, 0.1), rng.uniform(0.75, 1)
    p["blur"] = rng.uniform(0.5, 1.1) * h / 256
    p["noise"] = rng.uniform(0.01, 0.03)
    p["marker"] = rng.random() < 0.5, "LR"[int(rng.integers(2))], int(rng.integers(4))
    p["noise_seed"] = int(rng.integers(2**31))
    if rng.random() < level["hairline"]:  # drawn last: the draws above are the same at every level
        p["gap"], p["shift"] = p["gap"] * HAIRLINE_GAP, 0.0
    # Plain Python floats: NumPy 2 lets a float64 scalar promote the float32 images to float64
    # (twice as slow).
    return {k: tuple(map(_plain, v)) if isinstance(v, tuple) else _plain(v) for k, v in p.items()}


def _plain(x):
    return x.item() if isinstance(x, np.generic) else x


def _crack_u(p, v):
    """Position along the shaft of the crack line at cross-offset v (oblique and jagged)."""
    a, f1, p1, f2, p2 = p["jag"]
    wiggle = np.sin(f1 * v + p1) + 0.5 * np.sin(f2 * v + p2)
    return p["uc"] + math.tan(p["phi"]) * v + a * wiggle


def _fade(p, du):
    """1 at the crack line, 0 from one shaft radius away: how much of the step a point takes."""
    return 1.0 - _smoothstep(du / p["R"])


def _box(p):
    """Pixel box around the crack: its oblique/jagged span, the stretch of shaft the step bends
    (_fade), the stepped outline, plus a margin for the blur."""
    r, d, m = p["R"], abs(p["shift"]), 0.25 * p["R"]
    reach = max(r if d else 0.0, p["gap"])  # how far along the shaft the crack changes anything
    u_line = abs(math.tan(p["phi"])) * 2.5 * r + 1.5 * p["jag"][0]  # crack-line span, |v| <= 2.5 r
    u_ends = p["uc"] + np.array([-1.0, 1.0]) * (u_line + reach + m)
    half = _half_width(p, np.linspace(*u_ends, 64))[0].max()  # wider where the shaft flares
    v1 = half + d / 2 + m
    du = abs(math.tan(p["phi"])) * v1 + 1.5 * p["jag"][0] + reach + m
    st, ct = math.sin(p["theta"]), math.cos(p["theta"])
    us, vs = np.array([-du, -du, du, du]) + p["uc"], np.array([-v1, v1, -v1, v1])
    xs, ys = p["cx"] + us * st + vs * ct, p["cy"] + us * ct - vs * st  # bone frame -> image
    x0, x1 = max(0, int(np.floor(xs.min()))), min(p["W"], int(np.floor(xs.max())) + 1)
    y0, y1 = max(0, int(np.floor(ys.min()))), min(p["H"], int(np.floor(ys.max())) + 1)
    return x0, y0, x1, y1


def _half_width(p, u):
    """Long-bone outline at u: shaft widening into epiphyses, rounded ends, head end chosen by
    p["head"]. Returns (half width, how far into an epiphysis 0..1, u signed towards the head)."""
    big_l, r = p["L"], p["R"]
    ua = u * p["head"]
    head = ua < 0
    k_end = np.where(head, np.float32(p["k_head"]), np.float32(p["k_distal"]))
    ends = _smoothstep((np.abs(ua) - 0.24 * big_l) / (0.2 * big_l))
    taper = 1 - 0.12 * ua / big_l  # the shaft narrows a little towards the elbow
    rw = r * taper * (1 + (k_end - 1) * ends)
    # A round humeral head at one end, flatter condyles at the other.
    cap = r * k_end * np.where(head, np.float32(0.95), np.float32(0.55))
    over = (np.abs(ua) - (big_l / 2 - cap)) / cap
    rw = rw * np.sqrt(np.clip(1 - np.maximum(over, 0) ** 2, 0, 1)) * (over < 1)
    return rw, ends, ua


def _marker_mask(p):
    """uint8 mask (255 on the letter) of the lead side marker, or None when the film has none."""
    on, letter, corner = p["marker"]
    if not on:
        return None
    h, w = p["H"], p["W"]
    scale = h / 300
    org = (int(0.06 * w) if corner % 2 == 0 else int(w - 0.06 * w - 20 * scale),
           int(0.1 * h) if corner < 2 else int(0.95 * h))
    mark = np.zeros((h, w), np.uint8)  # OpenCV 5 draws text on 8-bit images only
    cv2.putText(mark, letter, org, cv2.FONT_HERSHEY_SIMPLEX, scale, 255, max(1, int(2 * scale)))
    return mark


def _marker_box(p):
    """Pixel box (x0, y0, x1, y1; x1/y1 exclusive) around the drawn marker plus the blur-free
    margin of one stroke, or None. Read off the same mask _render draws, so they cannot disagree."""
    mark = _marker_mask(p)
    if mark is None or not mark.any():
        return None
    ys, xs = np.nonzero(mark)
    m = max(1, int(round(p["H"] / 150)))
    return (max(0, int(xs.min()) - m), max(0, int(ys.min()) - m),
            min(p["W"], int(xs.max()) + 1 + m), min(p["H"], int(ys.max()) + 1 + m))


def _render(p, crack):
    """Float image -> uint8; everything is computed in the bone's own (u along, v across) frame."""
    h, w, r = p["H"], p["W"], p["R"]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dx, dy = xx - p["cx"], yy - p["cy"]
    st, ct = math.sin(p["theta"]), math.cos(p["theta"])
    u, v = dx * st + dy * ct, dx * ct - dy * st
    vb, crack_u = v, _crack_u(p, v)
    if crack:  # the fragments step sideways at the crack, back in line one shaft radius away
        du = u - crack_u
        vb = v - np.float32(p["shift"] / 2) * np.sign(du) * _fade(p, np.abs(du))
    rw, ends, ua = _half_width(p, u)
    # Hollow tube: bright cortex, darker canal; the ends hold spongy bone and a thinner cortex.
    inner = np.maximum(rw - p["cortex"] * r * (1 - 0.65 * ends), 0)
    bone = (_chord(rw, vb) - (0.96 - 0.4 * ends) * _chord(inner, vb)) / (2 * r)
    bone *= 1 + 0.15 * _texture(p["noise_seed"] + 1, h, w, r)  # trabecular mottling, own stream
    if crack:
        bone *= 1 - p["gap_depth"] * np.exp(-(((u - crack_u) / (p["gap"] / 2)) ** 4))
    on, uo, vo = p["canal"]
    if on:
        dist = vb - vo - 0.12 * (u - uo)  # vb: the canal moves with its fragment
        bone *= 1 - 0.3 * np.exp(-((dist / (0.006 * h)) ** 2)) * (np.abs(u - uo) < 0.6 * r)
    on, up = p["physis"]
    if on:
        bone *= 1 - 0.2 * np.exp(-(((ua - up) / (0.005 * h)) ** 2))
    amp, freq, phase = p["T_wave"]
    tissue = _chord(p["T"] * (1 + amp * np.sin(freq * u + phase)), v - p["T_off"]) / (2 * p["T"])
    bg, a_t, a_b = p["levels"]
    img = bg + a_t * tissue + a_b * bone + p["tilt"][0] * dx / w + p["tilt"][1] * dy / h
    img = cv2.GaussianBlur(img, (0, 0), p["blur"])
    img = np.clip(img, 0, 1) ** p["gamma"]
    img = p["lo"] + (p["hi"] - p["lo"]) * img
    mark = _marker_mask(p)
    if mark is not None:  # lead side marker, as on most clinical films
        img = np.maximum(img, mark * np.float32(0.95 / 255))
    noise = np.random.default_rng(p["noise_seed"]).standard_normal(img.shape, np.float32)
    img += p["noise"] * noise
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)


def _make_image(seed, positive, min_size=256, max_size=512, difficulty=None):
    """One image from its own seed: (uint8 array, box where the crack is, or would be)."""
    img, box, _ = _make_image_and_marker(seed, positive, min_size, max_size, difficulty)
    return img, box


def _make_image_and_marker(seed, positive, min_size=256, max_size=512, difficulty=None):
    """(uint8 array, crack box, side-marker box or None)."""
    p = _sample(np.random.default_rng(seed), min_size, max_size, difficulty)
    return _render(p, crack=positive), _box(p), _marker_box(p)


def generate(out_dir, patients=60, seed=0, study_types=("XR_HUMERUS",), valid_fraction=0.25,
             max_size=512, min_size=256, difficulty="easy") -> pathlib.Path:
    """Write a synthetic MURA v1.1 tree under out_dir/MURA-v1.1 and return that MURA-v1.1 path.

    difficulty: a DIFFICULTY level name, "level,key=low-high,..." or a dict (parse_difficulty)."""
    level = parse_difficulty(difficulty)  # before anything is written: a typo costs nothing
    min_size = min(min_size, max_size)  # so `--max-size 128` alone works
    if min_size < 16:
        raise FractureError(f"images of {min_size} px are too small for a bone; use min_size >= 16")
    root = pathlib.Path(out_dir) / ROOT_NAME
    if root.exists():
        # Regenerating must not leave stale images behind, but a real MURA copy is never deleted.
        if not (root / BOXES_CSV).exists():
            raise DataError(f"{root} exists and is not a synthetic tree; use another out_dir")
        shutil.rmtree(root)
    # The boxes file marks the tree as ours from the start: a run that crashes can be redone.
    root.mkdir(parents=True)
    (root / BOXES_CSV).write_text("path,x0,y0,x1,y1\n")
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    n_valid = int(round(valid_fraction * patients))
    if patients >= 2 and 0 < valid_fraction < 1:
        n_valid = min(max(n_valid, 1), patients - 1)  # both splits non-empty
    valid_ids = set(int(i) for i in rng.permutation(patients)[:n_valid] + 1)
    lines = {"train": ([], []), "valid": ([], [])}  # split -> (image paths, labeled studies)
    boxes, distractors, counts = [], [], {}
    for pid in range(1, patients + 1):
        split = "valid" if pid in valid_ids else "train"
        study_no = {}
        for _ in range(int(rng.integers(1, 4))):
            stype = study_types[int(rng.integers(len(study_types)))]
            study_no[stype] = study_no.get(stype, 0) + 1
            positive = bool(rng.random() < 0.5)
            study = (f"{ROOT_NAME}/{split}/{stype}/patient{pid:05d}/"
                     f"study{study_no[stype]}_{'positive' if positive else 'negative'}/")
            lines[split][1].append(f"{study},{int(positive)}")
            (root.parent / study).mkdir(parents=True)
            for k in range(1, int(rng.integers(1, 5)) + 1):
                img, box, marker = _make_image_and_marker(int(rng.integers(2**63)), positive, min_size, max_size,
                                                          level)
                rel = f"{study}image{k}.png"
                cv2.imwrite(str(root.parent / rel), img)
                lines[split][0].append(rel)
                if positive:
                    boxes.append(f"{rel},{box[0]},{box[1]},{box[2]},{box[3]}")
                if marker is not None:  # both classes: markers are drawn whatever the label
                    distractors.append(f"{rel},marker,{marker[0]},{marker[1]},{marker[2]},{marker[3]}")
                key = (split, positive)
                counts[key] = counts.get(key, 0) + 1
    for split, (images, studies) in lines.items():
        (root / f"{split}_image_paths.csv").write_text("".join(s + "\n" for s in images))
        (root / f"{split}_labeled_studies.csv").write_text("".join(s + "\n" for s in studies))
    (root / DISTRACTORS_CSV).write_text("path,kind,x0,y0,x1,y1\n" + "".join(d + "\n" for d in distractors))
    (root / BOXES_CSV).write_text("path,x0,y0,x1,y1\n" + "".join(b + "\n" for b in boxes))
    log.info("synthetic MURA at %s: train %d pos / %d neg images, valid %d pos / %d neg (%.1f s)",
             root, counts.get(("train", True), 0), counts.get(("train", False), 0),
             counts.get(("valid", True), 0), counts.get(("valid", False), 0),
             time.perf_counter() - start)
    return root


def load_boxes(mura_root) -> pd.DataFrame:
    """Read <mura_root>/fracture_boxes.csv; columns path (absolute str path of the image),
    x0, y0, x1, y1 (ints, pixels of that image; x1/y1 exclusive)."""
    root = pathlib.Path(mura_root).resolve()
    csv = root / BOXES_CSV
    if not csv.exists():
        raise DataError(f"{csv} not found: only fracture.synth.generate trees have boxes")
    df = pd.read_csv(csv, dtype={"path": str, "x0": int, "y0": int, "x1": int, "y1": int})
    # CSV paths start with "MURA-v1.1/", i.e. they are relative to the folder holding the tree.
    df["path"] = [str(root.parent / p) for p in df["path"]]
    return df


def load_distractor_boxes(mura_root) -> pd.DataFrame:
    """Read <mura_root>/distractor_boxes.csv (side markers, rulers, text: things a model should not
    look at); columns path (absolute str), kind, x0, y0, x1, y1. An empty frame when the dataset
    supplies no such file: distractor scores are then left out, not reported as zero."""
    root = pathlib.Path(mura_root).resolve()
    csv = root / DISTRACTORS_CSV
    columns = ["path", "kind", "x0", "y0", "x1", "y1"]
    if not csv.exists():
        return pd.DataFrame(columns=columns)
    try:
        df = pd.read_csv(csv, dtype={"path": str, "kind": str, "x0": int, "y0": int, "x1": int, "y1": int})
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{csv} is not a valid box file (columns {','.join(columns)}): {exc}") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{csv} lacks the columns {', '.join(missing)} (expected {','.join(columns)})")
    df["path"] = [str(root.parent / p) for p in df["path"]]
    return df[columns]
