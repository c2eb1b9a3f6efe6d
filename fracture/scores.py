"""The one probability, label rule and study score, shared by the app, the CAM panels, plots and evaluation.

Keras-free on purpose: the web app, `evaluation`, `plots` and `fracture.cam` all import it, and the
rules must not differ between them: a label (or a study's score) computed one way in the app and
another in the metrics would let the page and the reported scores disagree about the same image.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

ABNORMAL, NORMAL = "abnormal", "normal"


def probability(logit):
    """Sigmoid of a logit (scalar -> float, array -> float64 array), without overflow warnings.

    exp is only ever taken of -|x| (at most 1), so large |x| underflows quietly to 0 or 1 instead
    of overflowing as 1 / (1 + exp(-x)) does for x below about -709.
    """
    x = np.asarray(logit, np.float64)
    e = np.exp(-np.abs(x))
    p = np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return float(p) if p.ndim == 0 else p


def is_abnormal(probability, threshold):
    """The decision rule: strictly above the threshold is abnormal (a tie stays normal)."""
    return np.asarray(probability, np.float64) > threshold


def label(probability, threshold):
    """"abnormal" or "normal" (scalar -> str, array -> array of str) by `is_abnormal`."""
    verdict = np.where(is_abnormal(probability, threshold), ABNORMAL, NORMAL)
    return str(verdict) if verdict.ndim == 0 else verdict


# A probability this close to the threshold is reported as uncertain: the label still follows
# `is_abnormal`, but the app and the CAM panels say that it could easily have gone the other way
# (a 49.7 % "normal" is not the same answer as a 5 % "normal").
UNCERTAIN_BAND = 0.05


class Verdict(NamedTuple):
    """The label by the decision rule, and whether the probability lies within the uncertain band."""

    label: str
    uncertain: bool

    @property
    def text(self) -> str:
        """"abnormal", "normal", or "uncertain, leans abnormal|normal" near the threshold."""
        return f"uncertain, leans {self.label}" if self.uncertain else self.label


def verdict(probability: float, threshold: float, band: float = UNCERTAIN_BAND) -> Verdict:
    """label(probability, threshold), flagged uncertain when |probability - threshold| < band."""
    p = float(probability)
    return Verdict(label(p, threshold), abs(p - float(threshold)) < band)


def study_level(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per study: its label and the mean of its images' probabilities (MURA protocol), and
    its patient when the table has one."""
    grouped = frame.groupby("study", sort=True)
    labels = grouped["label"].agg(["min", "max"])
    mixed = labels[labels["min"] != labels["max"]]
    if len(mixed):
        raise ValueError(f"images of study {mixed.index[0]} carry different labels")
    out = pd.DataFrame({
        "label": labels["max"].astype(int),
        "probability": grouped["probability"].mean(),
        "images": grouped.size(),
    })
    if "patient" in frame:
        out["patient"] = grouped["patient"].first()
    return out.reset_index()


def near_threshold(probability, threshold, band: float = UNCERTAIN_BAND):
    """True where the probability lies within `band` of the threshold (scalar -> bool, array -> array)."""
    near = np.abs(np.asarray(probability, np.float64) - threshold) < band
    return bool(near) if near.ndim == 0 else near
