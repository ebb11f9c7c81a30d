"""The faces of the synthetic corpus: still photos with a closed mouth and their face mesh.

The photos live in assets/synthetic_faces/ (512 px JPEG crops): closed-mouth frames of the two
demo clips and scikit-image's `astronaut` (a NASA portrait, public domain). `build_identity_images`
re-creates them from those sources (needs scikit-image); the generator only reads the JPEGs.
Every photo is also used mirrored (name suffix MIRROR_SUFFIX), which doubles the identities.
The face mesh (MediaPipe FaceMesh, 468 points) is found once per photo and cached per process.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from latentsync.errors import UserError
from latentsync.io import atomic_output

FACES_DIR = Path(__file__).resolve().parents[2] / "assets" / "synthetic_faces"
MIRROR_SUFFIX = "_mirror"
CROP_SIZE = 512
CROP_FACE_SCALE = 1.8  # crop side / face-mesh box side: the face fills a bit more than half
JPEG_QUALITY = 90
# (demo clip, frame at 25 fps) with the mouth closed and the head frontal (found by scanning)
DEMO_FRAMES = (("demo1", 9), ("demo1", 102), ("demo2", 126), ("demo2", 282))


@dataclass(frozen=True)
class Identity:
    """A face photo (uint8 RGB [S, S, 3]) and its 468 face-mesh points in its pixels."""

    name: str
    image: np.ndarray
    landmarks: np.ndarray  # float64 [468, 2] (x, y)


def identity_names() -> list[str]:
    """Every identity the corpus can use: each photo, then each photo mirrored."""
    stems = sorted(p.stem for p in FACES_DIR.glob("*.jpg"))
    if not stems:
        raise UserError(f"{FACES_DIR}: no face photos (*.jpg); see latentsync/synthetic/identities.py")
    return stems + [stem + MIRROR_SUFFIX for stem in stems]


def _mesh_landmarks(image: np.ndarray, what: str) -> np.ndarray:
    from latentsync.face.detectors import MediaPipeDetector

    detector = MediaPipeDetector(max_num_faces=1)
    try:
        faces = detector.detect(image)
    finally:
        detector.close()
    if not faces:
        raise UserError(f"{what}: no face found by MediaPipe")
    return faces[0].landmarks


@functools.lru_cache(maxsize=None)
def load_identity(name: str, size: int = CROP_SIZE) -> Identity:
    """The identity `name` (see identity_names) at `size` x `size` pixels, with its face mesh."""
    stem = name[: -len(MIRROR_SUFFIX)] if name.endswith(MIRROR_SUFFIX) else name
    path = FACES_DIR / f"{stem}.jpg"
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise UserError(f"identity {name!r}: cannot read {path}")
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if stem != name:
        image = image[:, ::-1]
    if image.shape[:2] != (size, size):
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    image = np.ascontiguousarray(image)
    image.setflags(write=False)
    return Identity(name=name, image=image, landmarks=_mesh_landmarks(image, str(path)))


def crop_face(image: np.ndarray, size: int = CROP_SIZE, scale: float = CROP_FACE_SCALE) -> np.ndarray:
    """A square crop around the face of `image` (RGB), side = scale x the face-mesh box."""
    points = _mesh_landmarks(image, "crop_face")
    low, high = points.min(axis=0), points.max(axis=0)
    side = float((high - low).max()) * scale
    centre = (low + high) / 2
    zoom = size / side
    matrix = np.array([[zoom, 0, size / 2 - zoom * centre[0]], [0, zoom, size / 2 - zoom * centre[1]]])
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_AREA,
                          borderMode=cv2.BORDER_REFLECT)


def build_identity_images(out_dir: str | os.PathLike = FACES_DIR) -> list[Path]:
    """Write the identity JPEGs from the demo clips (assets/) and scikit-image's astronaut."""
    import skimage.data

    from latentsync.video import read_frames

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sources = [(f"{clip}_f{frame:03d}", lambda c=clip, f=frame: read_frames(
        FACES_DIR.parent / f"{c}_video.mp4", f, 1)[0]) for clip, frame in DEMO_FRAMES]
    sources.append(("astronaut", skimage.data.astronaut))
    written = []
    for stem, load in sources:
        crop = crop_face(np.ascontiguousarray(load()))
        path = out_dir / f"{stem}.jpg"
        with atomic_output(path) as temp:
            if not cv2.imwrite(str(temp), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
                raise OSError(f"{path}: could not write the JPEG")
        written.append(path)
    return written
