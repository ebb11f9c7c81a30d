"""Face detectors that give, per face, a box and the three alignment points of the reference.

The three points (see docs/face-processing.md), in pixel coordinates (x, y) and in this order:
P0 = image-left eyebrow centre, P1 = image-right eyebrow centre, P2 = nose centre.

Backends:
- `mediapipe` (default, offline; the FaceMesh models ship inside the wheel),
- `insightface` (the HEAD reference: SCRFD + 106-point landmarks from
  `checkpoints/auxiliary/models/buffalo_l`),
- `face_alignment` (the 1.0/1.5 reference: SFD + FAN 68 points from `checkpoints/auxiliary`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from latentsync.checkpoints import CHECKPOINTS_DIR, checkpoint_file, default_path
from latentsync.errors import UserError

logger = logging.getLogger(__name__)

DETECTOR_NAMES = ("mediapipe", "insightface", "face_alignment")  # what --face_backend takes
DEFAULT_FACE_BACKEND = "mediapipe"  # the default of every --face_backend

# MediaPipe FaceMesh indices of the three point groups (= 68-point 17-21, 22-26, 27-35; docs/face-processing.md).
MEDIAPIPE_POINT_GROUPS = (
    (71, 63, 105, 66, 107),
    (336, 296, 334, 293, 301),
    (168, 197, 5, 4, 75, 97, 2, 326, 305),
)
MEDIAPIPE_MAX_FACES = 5
MEDIAPIPE_MIN_CONFIDENCE = 0.5

# InsightFace 106-point groups and the reference's detection filters (docs/face-processing.md).
INSIGHTFACE_POINT_GROUPS = ((43, 48, 49, 51, 50), (101, 102, 103, 104, 105), (74, 77, 83, 86))
INSIGHTFACE_DET_SIZE = (512, 512)
INSIGHTFACE_DET_THRESH = 0.5
BUFFALO_FILES = ("det_10g.onnx", "2d106det.onnx")  # SCRFD detector, 106-point landmarks
MIN_FACE_WIDTH, MIN_FACE_HEIGHT = 50, 80
MIN_ASPECT, MAX_ASPECT = 0.2, 1.5

# face_alignment 68-point groups (0-based) and weight files (docs/face-processing.md).
FAN_POINT_GROUPS = (range(17, 22), range(22, 27), range(27, 36))
FAN_WEIGHTS = ("fan_s3fd", "fan")  # names in latentsync/checkpoints.py
FAN_WEIGHT_FILES = tuple(Path(checkpoint_file(name).path).name for name in FAN_WEIGHTS)

AUXILIARY_SOURCE = (f"huggingface-cli download {checkpoint_file('fan').repo} auxiliary/<file> "
                    f"--local-dir {CHECKPOINTS_DIR}")
BUFFALO_SOURCE = checkpoint_file("insightface").source()


@dataclass
class Face:
    """One detected face in frame pixel coordinates."""

    box: np.ndarray  # [4] float: x1, y1, x2, y2
    points: np.ndarray  # [3, 2] float: left brow centre, right brow centre, nose centre
    score: float
    landmarks: np.ndarray | None = None  # [K, 2] float, the backend's own landmark order

    @property
    def area(self) -> float:
        """Box width times height."""
        return float(max(self.box[2] - self.box[0], 0) * max(self.box[3] - self.box[1], 0))

    @property
    def center(self) -> np.ndarray:
        """Box centre (x, y)."""
        return np.array([(self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2])


class FaceDetector:
    """Finds every face in an RGB frame; subclasses implement `_detect`.

    An instance is not thread-safe (MediaPipe's graph rejects concurrent calls): give each
    thread or process its own detector, or serialise calls with a lock.
    """

    name = "base"

    def detect(self, frame_rgb: np.ndarray) -> list[Face]:
        """All faces in `frame_rgb` (uint8 [H, W, 3], RGB), in the backend's order."""
        frame_rgb = np.asarray(frame_rgb)
        if frame_rgb.ndim != 3 or frame_rgb.shape[2] != 3 or frame_rgb.dtype != np.uint8:
            raise ValueError(f"expected a uint8 [H, W, 3] frame, got {frame_rgb.dtype} "
                             f"{list(frame_rgb.shape)}")
        return self._detect(np.ascontiguousarray(frame_rgb))

    def _detect(self, frame_rgb: np.ndarray) -> list[Face]:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget any state carried between frames (start of a new clip)."""

    def close(self) -> None:
        """Release backend resources."""


def group_means(landmarks: np.ndarray, groups) -> np.ndarray:
    """[3, 2] float64: the mean of each landmark index group."""
    return np.stack([landmarks[list(g)].mean(axis=0) for g in groups]).astype(np.float64)


class MediaPipeDetector(FaceDetector):
    """MediaPipe FaceMesh (468 points), mapped to the reference points (docs/face-processing.md).

    `static_image_mode=True` detects every frame independently (predictable, no drift);
    False lets MediaPipe track landmarks between frames.
    """

    name = "mediapipe"

    def __init__(self, max_num_faces: int = MEDIAPIPE_MAX_FACES, static_image_mode: bool = True,
                 min_detection_confidence: float = MEDIAPIPE_MIN_CONFIDENCE):
        try:
            from mediapipe.python.solutions import face_mesh
        except ImportError as exc:
            raise UserError(f"mediapipe: face detector backend not installed ({exc}); "
                            "pip install mediapipe==0.10.21") from exc
        self._face_mesh_module = face_mesh
        self.options = dict(static_image_mode=static_image_mode, max_num_faces=max_num_faces,
                            refine_landmarks=False,
                            min_detection_confidence=min_detection_confidence)
        self._mesh = None

    def _detect(self, frame_rgb: np.ndarray) -> list[Face]:
        if self._mesh is None:
            self._mesh = self._face_mesh_module.FaceMesh(**self.options)
        height, width = frame_rgb.shape[:2]
        result = self._mesh.process(frame_rgb)
        faces = []
        for mesh in result.multi_face_landmarks or []:
            norm = np.array([(p.x, p.y) for p in mesh.landmark], dtype=np.float64)
            landmarks = norm * (width, height)
            pixel = np.stack([(norm[:, 0] * width).astype(np.int64),
                              (norm[:, 1] * height).astype(np.int64)], axis=1)
            box = np.concatenate([landmarks.min(axis=0), landmarks.max(axis=0)])
            faces.append(Face(box=box, points=group_means(pixel, MEDIAPIPE_POINT_GROUPS),
                              score=1.0, landmarks=landmarks))
        return faces

    def reset(self) -> None:
        self.close()

    def close(self) -> None:
        if self._mesh is not None:
            self._mesh.close()
            self._mesh = None


def _require(package: str, install: str, files: list[Path], purpose: str,
             source: str = AUXILIARY_SOURCE) -> None:
    """Raise one UserError naming every missing package and weight file of a backend."""
    problems = []
    if importlib.util.find_spec(package) is None:
        problems.append(f"Python package '{package}' is not installed ({install})")
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        problems.append(f"missing {', '.join(missing)} ({source})")
    if problems:
        raise UserError(f"{missing[0] if missing else package}: {purpose} needs: "
                        + "; ".join(problems))


def _import_backend(package: str, install: str):
    """Import an installed backend package, turning a broken install into a UserError."""
    try:
        return importlib.import_module(package)
    except ImportError as exc:
        raise UserError(f"{package}: installed but cannot be imported ({exc}); {install}") from exc


def _device_type(device) -> tuple[str, int]:
    """('cuda', index) or ('cpu', -1) from a device string / torch.device / None."""
    text = str(device) if device is not None else "cpu"
    if text.startswith("cuda"):
        _, _, index = text.partition(":")
        return "cuda", int(index or 0)
    return "cpu", -1


class InsightFaceDetector(FaceDetector):
    """InsightFace SCRFD + 2d106det (the HEAD reference), fed BGR as the library expects."""

    name = "insightface"

    def __init__(self, checkpoints_dir: str | Path = CHECKPOINTS_DIR, device=None):
        folder = default_path("insightface", checkpoints_dir)  # <checkpoints>/auxiliary/models/buffalo_l
        root = folder.parent.parent
        _require("insightface", "pip install insightface onnxruntime",
                 [folder / name for name in BUFFALO_FILES], "--face_backend insightface",
                 BUFFALO_SOURCE)
        FaceAnalysis = _import_backend("insightface.app",
                                       "pip install insightface onnxruntime").FaceAnalysis

        kind, index = _device_type(device)
        providers = (["CUDAExecutionProvider", "CPUExecutionProvider"] if kind == "cuda"
                     else ["CPUExecutionProvider"])
        self.app = FaceAnalysis(name="buffalo_l", root=str(root), providers=providers,
                                allowed_modules=["detection", "landmark_2d_106"])
        self.app.prepare(ctx_id=index, det_thresh=INSIGHTFACE_DET_THRESH,
                         det_size=INSIGHTFACE_DET_SIZE)

    def _detect(self, frame_rgb: np.ndarray) -> list[Face]:
        faces = []
        for det in self.app.get(np.ascontiguousarray(frame_rgb[:, :, ::-1])):
            x1, y1, x2, y2 = (int(v) for v in det.bbox)
            width, height = x2 - x1, y2 - y1
            if width < MIN_FACE_WIDTH or height < MIN_FACE_HEIGHT:
                continue
            if not MIN_ASPECT <= width / height <= MAX_ASPECT:
                continue
            if det.det_score < INSIGHTFACE_DET_THRESH:
                continue
            landmarks = np.round(np.asarray(det.landmark_2d_106, dtype=np.float64))
            points = np.round(group_means(landmarks, INSIGHTFACE_POINT_GROUPS))
            # the integer box, so the tracker's largest-area choice (and ties) match the reference (docs/face-processing.md)
            faces.append(Face(box=np.array([x1, y1, x2, y2], dtype=np.float64), points=points,
                              score=float(det.det_score), landmarks=landmarks))
        return faces


@contextlib.contextmanager
def _torch_hub_dir_with(files: list[Path]):
    """Point torch.hub's cache at a temporary dir whose `checkpoints/` links to `files`."""
    import torch

    old = torch.hub.get_dir()
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "checkpoints"
        cache.mkdir()
        for f in files:
            os.symlink(f.resolve(), cache / f.name)
        torch.hub.set_dir(tmp)
        try:
            yield
        finally:
            torch.hub.set_dir(old)


class FaceAlignmentDetector(FaceDetector):
    """face_alignment SFD + FAN 68 points (the 1.0/1.5 reference), RGB input."""

    name = "face_alignment"

    def __init__(self, checkpoints_dir: str | Path = CHECKPOINTS_DIR, device=None):
        files = [default_path(name, checkpoints_dir) for name in FAN_WEIGHTS]
        _require("face_alignment", "pip install face-alignment", files,
                 "--face_backend face_alignment")
        face_alignment = _import_backend("face_alignment", "pip install face-alignment")

        kind, index = _device_type(device)
        landmarks_type = getattr(face_alignment.LandmarksType, "TWO_D", None) or \
            getattr(face_alignment.LandmarksType, "_2D")
        with _torch_hub_dir_with(files):
            self.model = face_alignment.FaceAlignment(
                landmarks_type, flip_input=False, face_detector="sfd",
                device="cuda:%d" % index if kind == "cuda" else "cpu")

    def _detect(self, frame_rgb: np.ndarray) -> list[Face]:
        result = self.model.get_landmarks_from_image(frame_rgb, return_bboxes=True)
        landmark_sets, _, boxes = result if isinstance(result, tuple) else (result, None, None)
        faces = []
        for i, landmarks in enumerate(landmark_sets or []):
            landmarks = np.asarray(landmarks, dtype=np.float64)[:, :2]
            if boxes is not None and i < len(boxes):
                box, score = np.asarray(boxes[i][:4], np.float64), float(boxes[i][4])
            else:
                box, score = np.concatenate([landmarks.min(0), landmarks.max(0)]), 1.0
            faces.append(Face(box=box, points=group_means(landmarks, FAN_POINT_GROUPS),
                              score=score, landmarks=landmarks))
        return faces


def make_face_detector(name: str = DEFAULT_FACE_BACKEND, checkpoints_dir: str | Path = CHECKPOINTS_DIR,
                       device=None) -> FaceDetector:
    """The detector backend called `name` (one of DETECTOR_NAMES)."""
    if name == "mediapipe":
        return MediaPipeDetector()
    if name == "insightface":
        return InsightFaceDetector(checkpoints_dir, device)
    if name == "face_alignment":
        return FaceAlignmentDetector(checkpoints_dir, device)
    raise UserError(f"--face_backend {name!r}: expected one of {', '.join(DETECTOR_NAMES)}")
