"""Face stage: detection, following one face, alignment to the model square, paste-back, mask."""

from latentsync.face.alignment import AlignRestore
from latentsync.face.detectors import DEFAULT_FACE_BACKEND, DETECTOR_NAMES, Face, FaceDetector, make_face_detector
from latentsync.face.mask import DEFAULT_MASK_PATH, load_mask
from latentsync.face.tracking import FaceTracker

__all__ = ["AlignRestore", "DEFAULT_FACE_BACKEND", "DETECTOR_NAMES", "DEFAULT_MASK_PATH", "Face", "FaceDetector",
           "FaceTracker", "load_mask", "make_face_detector"]
