"""From timed phonemes to the truth mouth track: two degrees per video frame.

Every phoneme has a target mouth shape (a viseme) with two independent degrees:
* open  in [0, 1]: 0 = lips closed (m, b, p), about 1 = jaw wide open ("ah");
* width in [0, 1]: 0 = rounded and narrow ("oo", "w"), 0.5 = neutral, 1 = spread ("ee").
Coarticulation follows the dominance idea of Cohen and Massaro: each phoneme pulls the mouth
towards its target with a weight (its dominance); the weighted targets are smoothed over time with
a Gaussian and divided by the smoothed weights. Lip closures and rounding dominate (the lips must
really close on "b"), most other consonants barely do (their mouth shape follows the vowels).
The track is sampled at the middle of each video frame (MODEL_FPS).
"""

from __future__ import annotations

import csv
import os

import numpy as np
from scipy.ndimage import gaussian_filter1d

from latentsync.constants import MODEL_FPS
from latentsync.io import atomic_open
from latentsync.synthetic.speech import Phoneme

OPEN, WIDTH = 0, 1  # columns of a mouth track [n_frames, 2]
GRID_HZ = 1000  # time grid the targets are smoothed on
SIGMA_SECONDS = (0.025, 0.040)  # smoothing of (open, width): rounding spreads further than opening
STRESS_MARKS = "'ˈ,%=ˌ"
REST = (0.0, 0.5, 3.0)  # pause: lips closed, neutral width, medium dominance

# espeak-ng English mnemonics -> (open, width, dominance); a list means a diphthong's two halves
VISEMES = {
    **dict.fromkeys(["p", "b", "m"], (0.0, 0.5, 12.0)),
    **dict.fromkeys(["f", "v"], (0.08, 0.55, 6.0)),
    "w": (0.15, 0.05, 6.0),
    **dict.fromkeys(["S", "Z", "tS", "dZ"], (0.22, 0.3, 2.0)),
    **dict.fromkeys(["r", "r-", "3", "3:"], (0.3, 0.35, 1.0)),
    **dict.fromkeys(["a", "aa", "A:", "A@", "a#", "A"], (0.95, 0.6, 1.0)),
    **dict.fromkeys(["V", "@", "@2", "@5", "@L", "@-"], (0.5, 0.5, 0.7)),
    **dict.fromkeys(["0", "O:", "O@", "o@", "O"], (0.75, 0.2, 1.0)),
    **dict.fromkeys(["u:", "U", "U@", "u@", "u"], (0.3, 0.0, 2.0)),
    **dict.fromkeys(["i:", "i", "i@", "I", "I2", "I#", "i@3", "j"], (0.3, 1.0, 1.5)),
    **dict.fromkeys(["e", "E", "e@"], (0.6, 0.8, 1.0)),
    "aI": [(0.95, 0.6, 1.0), (0.35, 0.95, 1.2)],
    "aU": [(0.95, 0.6, 1.0), (0.3, 0.05, 1.5)],
    "eI": [(0.6, 0.8, 1.0), (0.3, 1.0, 1.2)],
    "oU": [(0.6, 0.2, 1.0), (0.3, 0.05, 1.5)],
    "OI": [(0.7, 0.2, 1.0), (0.3, 1.0, 1.2)],
}
DEFAULT_CONSONANT = (0.25, 0.55, 0.4)  # t d n l s z k g h T D N ...


def viseme_targets(name: str) -> list[tuple[float, float, float]]:
    """The (open, width, dominance) targets of one espeak phoneme (two for a diphthong)."""
    name = name.strip().lstrip(STRESS_MARKS)
    if not name or name.startswith("_") or name == "||":
        return [REST]
    for key in (name, name.rstrip(":"), name[:2], name[:1]):
        if key in VISEMES:
            value = VISEMES[key]
            return value if isinstance(value, list) else [value]
    return [DEFAULT_CONSONANT]


def _target_curves(phonemes: list[Phoneme], n_grid: int) -> np.ndarray:
    """[3, n_grid] piecewise-constant open, width and dominance on the GRID_HZ time grid."""
    curves = np.tile(np.array(REST, dtype=np.float64)[:, None], (1, n_grid))
    for phoneme in phonemes:
        start, end = int(round(phoneme.start * GRID_HZ)), int(round(phoneme.end * GRID_HZ))
        targets = viseme_targets(phoneme.name)
        bounds = np.linspace(start, end, len(targets) + 1).round().astype(int)
        for target, lo, hi in zip(targets, bounds[:-1], bounds[1:]):
            curves[:, max(lo, 0):min(hi, n_grid)] = np.array(target)[:, None]
    return curves


def mouth_track(phonemes: list[Phoneme], n_frames: int, fps: float = MODEL_FPS) -> np.ndarray:
    """float32 [n_frames, 2] (open, width) for phonemes timed from the clip's start (seconds)."""
    n_grid = int(np.ceil(n_frames / fps * GRID_HZ)) + 1
    curves = _target_curves(phonemes, n_grid)
    weight = curves[2]
    centres = ((np.arange(n_frames) + 0.5) / fps * GRID_HZ).round().astype(int).clip(0, n_grid - 1)
    track = np.empty((n_frames, 2), dtype=np.float32)
    for column, sigma in zip((OPEN, WIDTH), SIGMA_SECONDS):
        s = sigma * GRID_HZ
        mixed = gaussian_filter1d(curves[column] * weight, s, mode="nearest")
        track[:, column] = (mixed / gaussian_filter1d(weight, s, mode="nearest"))[centres]
    return track


def fit_track(track: np.ndarray, n_frames: int) -> np.ndarray:
    """`track` cut or extended (lips at rest) to `n_frames`: a new sentence's mouth on a clip."""
    out = np.tile(np.array(REST[:2], dtype=np.float32), (n_frames, 1))
    n = min(n_frames, len(track))
    out[:n] = track[:n]
    return out


def write_track_csv(path: str | os.PathLike, track: np.ndarray) -> None:
    """CSV with columns frame,open,width (temp name, then rename)."""
    with atomic_open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["frame", "open", "width"])
        for i, (o, w) in enumerate(track):
            writer.writerow([i, f"{o:.5f}", f"{w:.5f}"])


def read_track_csv(path: str | os.PathLike) -> np.ndarray:
    """float32 [n_frames, 2] (open, width) from a file written by `write_track_csv`."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return np.array([[float(r["open"]), float(r["width"])] for r in rows], dtype=np.float32).reshape(-1, 2)
