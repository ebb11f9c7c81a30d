"""Following one person's face through a video when a frame may hold several faces.

The face is chosen once, on the first frame with faces: the largest, or the `face_index`-th
from the left, or the one overlapping `face_box` most. Later frames take the detection that
best matches the previous box (IoU, else a nearby centre), so the choice does not jump to
another person when sizes change. When the chosen face is missing for `reacquire_after`
consecutive frames (scene cut, person left), the choice is made anew.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from latentsync.constants import MODEL_FPS
from latentsync.face.detectors import Face, FaceDetector

logger = logging.getLogger(__name__)

MIN_MATCH_IOU = 0.1
MAX_CENTRE_SHIFT = 0.5  # fraction of the previous box diagonal
REACQUIRE_AFTER = MODEL_FPS  # frames: one second at the model's frame rate


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two x1, y1, x2, y2 boxes."""
    inter = box_intersection(a, b)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def box_intersection(a: np.ndarray, b: np.ndarray) -> float:
    """Area shared by two x1, y1, x2, y2 boxes."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    return float(max(width, 0) * max(height, 0))


class FaceTracker:
    """Picks one face per frame from `detector` and keeps following the same person."""

    def __init__(self, detector: FaceDetector, face_index: int | None = None,
                 face_box: Sequence[float] | None = None, reacquire_after: int = REACQUIRE_AFTER):
        self.detector = detector
        self.face_index = face_index
        self.face_box = None if face_box is None else np.asarray(face_box, dtype=np.float64)
        self.reacquire_after = reacquire_after
        self.reset()

    def reset(self) -> None:
        """Forget the followed face (new clip)."""
        self.previous: np.ndarray | None = None
        self.lost = 0
        self._warned = False
        self.detector.reset()

    def track(self, frame: np.ndarray) -> Face | None:
        """The followed face in `frame` (uint8 RGB [H, W, 3]), or None if it is not there."""
        faces = self.detector.detect(frame)
        chosen = self.follow(faces) if self.previous is not None else self.choose(faces)
        if chosen is None:
            self.lost += 1
            if self.previous is not None and self.lost >= self.reacquire_after:
                self.previous = None
            return None
        self.previous = np.asarray(chosen.box, dtype=np.float64)
        self.lost = 0
        return chosen

    def choose(self, faces: list[Face]) -> Face | None:
        """The face to start following, by face_box, face_index or size."""
        if not faces:
            return None
        if self.face_box is not None:
            overlaps = [box_intersection(f.box, self.face_box) for f in faces]
            best = int(np.argmax(overlaps))
            return faces[best] if overlaps[best] > 0 else None
        if self.face_index is not None:
            ordered = sorted(faces, key=lambda f: f.center[0])
            if self.face_index < len(ordered):
                return ordered[self.face_index]
            if not self._warned:
                logger.warning("face index %d requested but only %d face(s) in the frame",
                               self.face_index, len(ordered))
                self._warned = True
            return None
        areas = [f.area for f in faces]
        return faces[int(np.argmax(areas))]  # argmax: the first one wins ties

    def follow(self, faces: list[Face]) -> Face | None:
        """The face matching the previous box: best IoU, else the nearest close centre."""
        if not faces:
            return None
        prev = self.previous
        ious = [box_iou(f.box, prev) for f in faces]
        best = int(np.argmax(ious))
        if ious[best] >= MIN_MATCH_IOU:
            return faces[best]
        prev_centre = np.array([(prev[0] + prev[2]) / 2, (prev[1] + prev[3]) / 2])
        shifts = [float(np.linalg.norm(f.center - prev_centre)) for f in faces]
        best = int(np.argmin(shifts))
        diagonal = float(np.hypot(prev[2] - prev[0], prev[3] - prev[1]))
        return faces[best] if shifts[best] <= MAX_CENTRE_SHIFT * diagonal else None
