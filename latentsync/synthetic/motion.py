"""Head motion and lighting of a synthetic clip: smooth random per-frame values, kept as data.

A clip's motion is stored next to it (NAME.motion.csv), so a benchmark can re-render the clip's
head and light with another mouth track (the truth of a dub).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d

from latentsync.io import atomic_open

SMOOTH_FRAMES = 10.0  # Gaussian sigma of the random walks (frames): slow, natural drifts
SHIFT = 0.025  # typical shift, fraction of the frame side
ANGLE = 2.5  # typical roll, degrees
SCALE = 0.04  # typical relative zoom
GAIN = 0.08  # typical brightness change; each clip also gets a colour cast of this size / 2
TILT = 0.08  # typical horizontal light gradient (relative brightness at the frame's edges)
COLUMNS = ("frame", "shift_x", "shift_y", "angle", "scale", "gain_r", "gain_g", "gain_b", "light_tilt")


@dataclass
class HeadMotion:
    """Per-frame head pose and light: shift [n, 2] (fractions of the frame side), angle [n]
    (degrees, counter-clockwise), scale [n], gain [n, 3] (RGB multipliers), light_tilt [n]."""

    shift: np.ndarray
    angle: np.ndarray
    scale: np.ndarray
    gain: np.ndarray
    light_tilt: np.ndarray

    def __len__(self) -> int:
        return len(self.angle)

    def fit(self, n_frames: int) -> "HeadMotion":
        """The first `n_frames` frames; a shorter motion holds its last frame."""
        index = np.minimum(np.arange(n_frames), len(self) - 1)
        return HeadMotion(self.shift[index], self.angle[index], self.scale[index], self.gain[index],
                          self.light_tilt[index])

    @classmethod
    def still(cls, n_frames: int) -> "HeadMotion":
        """No motion, neutral light."""
        return cls(np.zeros((n_frames, 2)), np.zeros(n_frames), np.ones(n_frames), np.ones((n_frames, 3)),
                   np.zeros(n_frames))


def _walk(rng: np.random.Generator, n_frames: int, size: float, channels: int = 1) -> np.ndarray:
    """A smooth random signal [n, channels] with standard deviation about `size`."""
    noise = rng.standard_normal((n_frames + 4 * int(SMOOTH_FRAMES), channels))
    smooth = gaussian_filter1d(noise, SMOOTH_FRAMES, axis=0, mode="wrap")[: n_frames]
    return smooth / (smooth.std() + 1e-8) * size if n_frames > 1 else smooth * 0


def random_head_motion(n_frames: int, rng: np.random.Generator) -> HeadMotion:
    """Small smooth random head motion and light changes for `n_frames` frames."""
    cast = 1 + rng.uniform(-GAIN / 2, GAIN / 2, size=3)
    brightness = 1 + rng.uniform(-GAIN, GAIN) + _walk(rng, n_frames, GAIN / 2)
    return HeadMotion(
        shift=_walk(rng, n_frames, SHIFT, 2) + rng.uniform(-SHIFT, SHIFT, 2),
        angle=(_walk(rng, n_frames, ANGLE) + rng.uniform(-ANGLE, ANGLE))[:, 0],
        scale=(1 + _walk(rng, n_frames, SCALE / 2) + rng.uniform(-SCALE, SCALE))[:, 0],
        gain=brightness * cast,
        light_tilt=(_walk(rng, n_frames, TILT / 2) + rng.uniform(-TILT, TILT))[:, 0],
    )


def write_motion_csv(path: str | os.PathLike, motion: HeadMotion) -> None:
    """CSV with one row per frame (COLUMNS); temp name, then rename."""
    values = np.column_stack([np.arange(len(motion)), motion.shift, motion.angle, motion.scale,
                              motion.gain, motion.light_tilt])
    with atomic_open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for row in values:
            writer.writerow([int(row[0])] + [f"{x:.6f}" for x in row[1:]])


def read_motion_csv(path: str | os.PathLike) -> HeadMotion:
    """The HeadMotion written by `write_motion_csv`."""
    values = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    return HeadMotion(shift=values[:, 1:3], angle=values[:, 3], scale=values[:, 4], gain=values[:, 5:8],
                      light_tilt=values[:, 8])
