"""Mouth shape measured on video frames with MediaPipe, never read from a model or a track.

Both measures are divided by the distance between the outer eye corners (FaceMesh points 33 and
263), which does not change when the jaw drops or the head scales:
* opening: distance between the inner-lip midpoints (points 13 and 14);
* width:   distance between the mouth corners (points 61 and 291).
Used to check that rendered or generated mouths follow a truth track.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

UPPER_LIP, LOWER_LIP = 13, 14
MOUTH_CORNERS = (61, 291)
EYE_CORNERS = (33, 263)


def mouth_from_landmarks(landmarks: np.ndarray) -> tuple[float, float]:
    """(opening, width) of one face's 468 FaceMesh points, in eye-corner distances."""
    distance = lambda a, b: float(np.linalg.norm(landmarks[a] - landmarks[b]))
    eyes = max(distance(*EYE_CORNERS), 1e-6)
    return distance(UPPER_LIP, LOWER_LIP) / eyes, distance(*MOUTH_CORNERS) / eyes


def largest_faces(frames: Iterable[np.ndarray], detector=None) -> Iterator[tuple[np.ndarray, object]]:
    """(frame, its largest face or None) per uint8 RGB frame. `detector`: a MediaPipe
    FaceDetector (default: a new one, closed when the frames end)."""
    from latentsync.face.detectors import MediaPipeDetector

    own = detector is None
    detector = MediaPipeDetector(max_num_faces=1) if own else detector
    try:
        for frame in frames:
            faces = detector.detect(np.ascontiguousarray(frame))
            yield frame, (max(faces, key=lambda f: f.area) if faces else None)
    finally:
        if own:
            detector.close()


def measure_mouth(frames: Iterable[np.ndarray], detector=None) -> np.ndarray:
    """float [n, 2] (opening, width) of the largest face per uint8 RGB frame; NaN where no face
    is found. `detector`: a MediaPipe FaceDetector (default: a new one, closed afterwards)."""
    values = [(np.nan, np.nan) if face is None else mouth_from_landmarks(face.landmarks)
              for _, face in largest_faces(frames, detector)]
    return np.array(values, dtype=np.float64).reshape(-1, 2)


def measure_mouth_opening(frames: Iterable[np.ndarray], detector=None) -> np.ndarray:
    """float [n]: the opening column of `measure_mouth`."""
    return measure_mouth(frames, detector)[:, 0]
