"""Fréchet Video Distance on face crops.

Each video contributes one clip: frames 20..35 (no frame-rate conversion), each cropped to the
first detected face box and resized to 224x224 with INTER_AREA. A TorchScript I3D (Kinetics-400,
`checkpoints/auxiliary/i3d_torchscript.pt`, the StyleGAN-V / fvd-comparison release) turns each
clip, as [B, 3, 16, 224, 224] in [0, 1], into a 400-d feature; FVD is the Fréchet distance
between the real and the fake feature sets.

Differences from the reference: the face box comes from the project's detector (MediaPipe
FaceMesh extent by default; the reference uses MediaPipe FaceDetection's box), and a frame without
a face is a UserError naming the file and frame (the reference returns an error object that
later breaks the stacking). TorchScript files contain code: load only files you trust.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import numpy as np
import torch

from latentsync.checkpoints import checkpoint_file, default_path
from latentsync.errors import UserError
from latentsync.eval.frechet import frechet_distance
from latentsync.eval.media import list_videos
from latentsync.video import count_frames, read_frames

logger = logging.getLogger(__name__)

I3D_PATH = str(default_path("i3d"))
I3D_SOURCE = f"get it from {checkpoint_file('i3d').source()} (StyleGAN-V's I3D release)"
FIRST_FRAME = 20
NUM_FRAMES = 16
FACE_SIZE = 224
BATCH_SIZE = 4


def load_i3d(path: str | os.PathLike = I3D_PATH, device="cpu") -> torch.jit.ScriptModule:
    """The TorchScript I3D feature extractor in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: I3D TorchScript model not found; {I3D_SOURCE}")
    try:
        model = torch.jit.load(str(path), map_location=torch.device(device))
    except Exception as exc:  # TorchScript raises RuntimeError or ValueError subtypes
        raise UserError(f"{path}: not a TorchScript model ({str(exc).splitlines()[0]})") from None
    return model.eval()


def face_box(frame: np.ndarray, detector, where: str) -> tuple[int, int, int, int]:
    """The first detected face of an RGB frame as integer x1, y1, x2, y2 clipped to the frame."""
    faces = detector.detect(frame)
    if not faces:
        raise UserError(f"{where}: no face detected")
    height, width = frame.shape[:2]
    x1, y1, x2, y2 = (int(v) for v in np.asarray(faces[0].box)[:4])
    x1, x2 = min(max(x1, 0), width), min(max(x2, 0), width)
    y1, y2 = min(max(y1, 0), height), min(max(y2, 0), height)
    if x2 <= x1 or y2 <= y1:
        raise UserError(f"{where}: the face box lies outside the frame")
    return x1, y1, x2, y2


def face_clip(video_path: str | os.PathLike, detector, first_frame: int = FIRST_FRAME,
              num_frames: int = NUM_FRAMES) -> np.ndarray:
    """uint8 [16, 224, 224, 3] RGB face crops of frames first_frame .. first_frame+15."""
    try:  # the decoded frames as stored (no frame-rate conversion), RGB
        frames = read_frames(video_path, first_frame, num_frames, fps=None)
    except IndexError:
        raise UserError(f"{video_path}: FVD needs frames {first_frame}..{first_frame + num_frames - 1}, "
                        f"the video has only {count_frames(video_path, fps=None)} frames") from None
    if hasattr(detector, "reset"):
        detector.reset()
    crops = []
    for i, frame in enumerate(frames):
        x1, y1, x2, y2 = face_box(frame, detector, f"{video_path}: frame {first_frame + i}")
        crops.append(cv2.resize(frame[y1:y2, x1:x2], (FACE_SIZE, FACE_SIZE),
                                interpolation=cv2.INTER_AREA))
    return np.stack(crops)


@torch.no_grad()
def i3d_features(model, clips: np.ndarray, device="cpu", batch_size: int = BATCH_SIZE) -> np.ndarray:
    """[B, D] float64 I3D features of uint8 clips [B, 16, 224, 224, 3] (RGB)."""
    out = []
    for start in range(0, len(clips), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(clips[start:start + batch_size]))
        x = x.to(device, torch.float32).div(255.0).permute(0, 4, 1, 2, 3)  # [B, 3, T, H, W]
        feats = model(x, rescale=False, resize=False, return_features=True)
        out.append(feats.detach().double().cpu().numpy().reshape(len(x), -1))
    return np.concatenate(out)


def folder_features(videos_dir: str | os.PathLike, model, detector, device="cpu") -> np.ndarray:
    """I3D features [N, D] of the face clip of every video in `videos_dir`."""
    videos = list_videos(videos_dir)
    feats = []
    for video in videos:
        logger.info("FVD features: %s", video.name)
        feats.append(i3d_features(model, face_clip(video, detector)[None], device))
    return np.concatenate(feats)


def compute_fvd(real_videos_dir: str | os.PathLike, fake_videos_dir: str | os.PathLike, model,
                detector, device="cpu") -> float:
    """FVD between the face clips of two folders (each needs at least 2 videos)."""
    real = folder_features(real_videos_dir, model, detector, device)
    fake = folder_features(fake_videos_dir, model, detector, device)
    for name, feats in ((real_videos_dir, real), (fake_videos_dir, fake)):
        if len(feats) < 2:
            raise UserError(f"{name}: FVD needs at least 2 videos per folder, found {len(feats)}")
    return frechet_distance(real, fake)
