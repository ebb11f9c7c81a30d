"""Mouth metrics users feel: how far the dubbed mouth opens, how sharp it is, and how much of the old
speech survives. All measured on video frames with MediaPipe FaceMesh (never read from a model).

* open ratio: the dub's mean mouth opening over speech frames / the truth's over the same frames
  (1.0 is right; below 1 the dub opens too little). Opening as latentsync/synthetic/measure.py
  defines it: inner-lip gap over the outer-eye-corner distance.
* texture ratio: high-frequency energy inside the mouth box, the variance of the Laplacian of the
  box's grey levels, averaged over frames, dub / truth (1.0 is right; below 1 the dub is blurrier).
  The box is centred between the inner lips, MOUTH_BOX mouth widths wide and high, from each
  frame's own landmarks.
* leak correlation: Pearson correlation of the dub's opening with the *source* clip's own opening
  (the video before dubbing): how much of the old mouth the dub still shows (0 is right when the
  new speech is unrelated to the old).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import cv2
import numpy as np

from latentsync.synthetic.measure import LOWER_LIP, MOUTH_CORNERS, UPPER_LIP, largest_faces, mouth_from_landmarks

MOUTH_BOX = (0.8, 0.6)  # half width, half height of the mouth box, in mouth-corner distances
MIN_BOX = 8  # pixels: a smaller box has too little texture to measure


@dataclass
class MouthTrack:
    """Per frame: opening (NaN without a face), mouth box (x1, y1, x2, y2) or None, texture (NaN)."""

    opening: np.ndarray
    boxes: list
    texture: np.ndarray

    @classmethod
    def of(cls, measures: list[tuple[float, tuple | None, float]]) -> "MouthTrack":
        """From per-frame `mouth_of` results."""
        return cls(np.array([m[0] for m in measures], np.float64).reshape(-1), [m[1] for m in measures],
                   np.array([m[2] for m in measures], np.float64).reshape(-1))


def mouth_box(landmarks: np.ndarray, height: int, width: int) -> tuple[int, int, int, int]:
    """The mouth box of one face's FaceMesh points, clipped to the frame."""
    corners = float(np.linalg.norm(landmarks[MOUTH_CORNERS[0]] - landmarks[MOUTH_CORNERS[1]]))
    centre = (landmarks[UPPER_LIP] + landmarks[LOWER_LIP]) / 2
    half = np.array(MOUTH_BOX) * corners
    x1, y1 = np.floor(centre - half).astype(int)
    x2, y2 = np.ceil(centre + half).astype(int)
    return max(int(x1), 0), max(int(y1), 0), min(int(x2), width), min(int(y2), height)


def texture_energy(frame: np.ndarray, box: tuple[int, int, int, int] | None) -> float:
    """Variance of the Laplacian of the grey mouth box of a uint8 RGB frame (NaN: no usable box)."""
    if box is None or box[2] - box[0] < MIN_BOX or box[3] - box[1] < MIN_BOX:
        return float("nan")
    x1, y1, x2, y2 = box
    grey = cv2.cvtColor(np.ascontiguousarray(frame[y1:y2, x1:x2]), cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(grey.astype(np.float64), cv2.CV_64F).var())


def mouth_of(frame: np.ndarray, face) -> tuple[float, tuple | None, float]:
    """(opening, mouth box, texture) of one detected face (a latentsync.face Face with FaceMesh
    landmarks) in its uint8 RGB frame; (NaN, None, NaN) for no face."""
    if face is None or face.landmarks is None:
        return float("nan"), None, float("nan")
    box = mouth_box(face.landmarks, *frame.shape[:2])
    return mouth_from_landmarks(face.landmarks)[0], box, texture_energy(frame, box)


def measure_mouth_track(frames: Iterable[np.ndarray], detector=None) -> MouthTrack:
    """One FaceMesh pass over uint8 RGB frames (the largest face of each) -> MouthTrack.
    `detector`: a MediaPipeDetector (default: a new one, closed afterwards)."""
    return MouthTrack.of([mouth_of(frame, face) for frame, face in largest_faces(frames, detector)])


def _aligned(*tracks: np.ndarray) -> list[np.ndarray]:
    n = min(len(t) for t in tracks)
    return [np.asarray(t[:n], np.float64) for t in tracks]


def open_ratio(opening: np.ndarray, truth_opening: np.ndarray, speech: np.ndarray | None = None) -> float:
    """Mean opening of the dub over speech frames (all frames when `speech` is None) where both
    have a face, divided by the truth's mean there; NaN when nothing is left or the truth never opens."""
    a, b = _aligned(opening, truth_opening)
    keep = np.isfinite(a) & np.isfinite(b)
    if speech is not None:  # frames past the end of `speech` count as silent
        talking = np.zeros(len(a), bool)
        talking[: min(len(a), len(speech))] = np.asarray(speech, bool)[: len(a)]
        keep &= talking
    if not keep.any() or b[keep].mean() <= 1e-9:
        return float("nan")
    return float(a[keep].mean() / b[keep].mean())


def texture_ratio(texture: np.ndarray, truth_texture: np.ndarray) -> float:
    """Mean mouth-box texture energy of the dub / the truth's, over frames where both are measured."""
    a, b = _aligned(texture, truth_texture)
    keep = np.isfinite(a) & np.isfinite(b)
    if not keep.any() or b[keep].mean() <= 1e-12:
        return float("nan")
    return float(a[keep].mean() / b[keep].mean())


def correlation(measured: np.ndarray, other: np.ndarray) -> float:
    """Pearson correlation over frames where both are finite (0 when either is constant or fewer
    than 3 frames are left)."""
    a, b = _aligned(measured, other)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if len(a) < 3 or a.std() < 1e-9 or b.std() < 1e-9:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def leak_correlation(opening: np.ndarray, source_opening: np.ndarray) -> float:
    """How much of the source clip's own mouth motion the dub still shows: their correlation."""
    return correlation(opening, source_opening)
