"""Frame-level metrics of generated videos: SSIM against the real frames, and FID.

SSIM is the standard definition (Wang et al. 2004): 11x11 Gaussian window with sigma 1.5,
K1 = 0.01, K2 = 0.03, data range 255, statistics over fully covered windows only ("valid"),
mean of the SSIM map, averaged over colour channels.

FID is the Fréchet distance between per-frame feature sets. The feature extractor is any
callable mapping uint8 RGB frames [N, H, W, 3] to [N, D]; the default is torchvision's
Inception v3 (pool features, 2048-d) loaded from a local file, since nothing is downloaded
here. Numbers from torchvision's weights are not comparable with pytorch-fid's (which uses
the TF-ported "FID Inception" weights).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import cv2
import numpy as np
import torch

from latentsync.checkpoints import checkpoint_file, default_path
from latentsync.errors import UserError
from latentsync.eval.frechet import frechet_distance
from latentsync.eval.media import list_videos
from latentsync.io import load_torch_file
from latentsync.video import iter_single_frames

logger = logging.getLogger(__name__)

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
DATA_RANGE = 255.0

INCEPTION_PATH = str(default_path("inception"))
INCEPTION_SOURCE = (f"torchvision's Inception v3 ImageNet weights from {checkpoint_file('inception').source()}; "
                    "pass its path with --inception_path")
INCEPTION_SIZE = 299
FEATURE_BATCH = 16

FeatureExtractor = Callable[[np.ndarray], np.ndarray]


# ----------------------------------------------------------------------------------------
# SSIM


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """[size, size] Gaussian weights summing to 1."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x ** 2) / (2 * sigma ** 2))
    g /= g.sum()
    return np.outer(g, g)


def _local_mean(image: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Weighted mean over every fully covered window position ('valid' filtering)."""
    r = window.shape[0] // 2
    filtered = cv2.filter2D(image, cv2.CV_64F, window, borderType=cv2.BORDER_REFLECT)
    return filtered[r:image.shape[0] - r, r:image.shape[1] - r]


def ssim_map(x: np.ndarray, y: np.ndarray, data_range: float = DATA_RANGE) -> np.ndarray:
    """Per-position SSIM of two single-channel images (float or uint8, same shape)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    window = gaussian_window()
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    mu_x, mu_y = _local_mean(x, window), _local_mean(y, window)
    var_x = _local_mean(x * x, window) - mu_x ** 2
    var_y = _local_mean(y * y, window) - mu_y ** 2
    cov = _local_mean(x * y, window) - mu_x * mu_y
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))


def ssim(image1: np.ndarray, image2: np.ndarray, data_range: float = DATA_RANGE) -> float:
    """Mean SSIM of two uint8 frames [H, W] or [H, W, C] (channels averaged)."""
    a, b = np.asarray(image1), np.asarray(image2)
    if a.shape != b.shape:
        raise ValueError(f"SSIM needs equal shapes, got {list(a.shape)} and {list(b.shape)}")
    if min(a.shape[:2]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs frames of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {list(a.shape)}")
    if a.ndim == 2:
        return float(ssim_map(a, b, data_range).mean())
    return float(np.mean([ssim_map(a[..., c], b[..., c], data_range).mean() for c in range(a.shape[2])]))


# ----------------------------------------------------------------------------------------
# FID


class InceptionFeatures:
    """torchvision Inception v3 pool features (2048-d) from a local weights file."""

    def __init__(self, weights_path: str | os.PathLike = INCEPTION_PATH, device="cpu"):
        import torchvision

        path = Path(weights_path)
        if not path.is_file():
            raise UserError(f"{path}: Inception v3 weights not found (FID); {INCEPTION_SOURCE}")
        state = load_torch_file(path, "Inception v3 weights file")
        model = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False,
                                                transform_input=False)
        try:
            model.load_state_dict(state, strict=True)
        except (RuntimeError, TypeError) as exc:
            raise UserError(f"{path}: not torchvision Inception v3 weights "
                            f"({str(exc).splitlines()[0]})") from None
        model.fc = torch.nn.Identity()
        self.model = model.to(device).eval()
        self.device = device

    @torch.no_grad()
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """[N, 2048] features of uint8 RGB frames [N, H, W, 3] (resized to 299x299, bilinear)."""
        small = np.stack([cv2.resize(np.ascontiguousarray(f), (INCEPTION_SIZE, INCEPTION_SIZE),
                                     interpolation=cv2.INTER_LINEAR) for f in frames])
        x = torch.from_numpy(small).to(self.device, torch.float32).permute(0, 3, 1, 2).div(255.0)
        return self.model((x - 0.5) / 0.5).double().cpu().numpy()


def extract_features(frames: Iterable[np.ndarray], extractor: FeatureExtractor,
                     batch_size: int = FEATURE_BATCH) -> np.ndarray:
    """[N, D] features of a stream of uint8 RGB frames, computed in batches."""
    feats, batch = [], []
    for frame in frames:
        batch.append(frame)
        if len(batch) == batch_size:
            feats.append(np.asarray(extractor(np.stack(batch)), np.float64))
            batch = []
    if batch:
        feats.append(np.asarray(extractor(np.stack(batch)), np.float64))
    if not feats:
        raise ValueError("no frames to extract features from")
    return np.concatenate(feats)


def fid(real_frames: Iterable[np.ndarray], fake_frames: Iterable[np.ndarray],
        extractor: FeatureExtractor, batch_size: int = FEATURE_BATCH) -> float:
    """FID between two frame collections (uint8 RGB [H, W, 3] each)."""
    return frechet_distance(extract_features(real_frames, extractor, batch_size),
                            extract_features(fake_frames, extractor, batch_size))


# ----------------------------------------------------------------------------------------
# folders


def evaluate_folders(real_videos_dir: str | os.PathLike, fake_videos_dir: str | os.PathLike,
                     extractor: FeatureExtractor | None, frame_stride: int = 1,
                     max_frames: int | None = None) -> dict:
    """SSIM of each fake video against the real video of the same name, and FID over frames.

    Frames are compared index by index (every `frame_stride`-th, at most `max_frames` per
    video) up to the shorter video; frames are streamed, not held. With `extractor=None`
    only SSIM is computed.
    """
    fakes = list_videos(fake_videos_dir)
    real_dir = Path(real_videos_dir)
    feats: dict[str, list[np.ndarray]] = {"real": [], "fake": []}
    scores = []
    for fake in fakes:
        real = real_dir / fake.name
        if not real.is_file():
            raise UserError(f"{real}: no real video with the name of {fake}")
        video_scores, batch = [], []
        for a, b in _paired_frames(real, fake, frame_stride, max_frames):
            video_scores.append(ssim(a, b))
            batch.append((a, b))
            if extractor is not None and len(batch) == FEATURE_BATCH:
                _add_features(feats, batch, extractor)
                batch = []
        if extractor is not None and batch:
            _add_features(feats, batch, extractor)
        if not video_scores:
            raise UserError(f"{fake}: no frames to compare")
        scores.append(float(np.mean(video_scores)))
    result = dict(ssim=float(np.mean(scores)), num_videos=len(fakes), fid=None)
    if extractor is not None:
        real_all, fake_all = np.concatenate(feats["real"]), np.concatenate(feats["fake"])
        if len(real_all) < 2:
            raise UserError(f"{fake_videos_dir}: FID needs at least 2 frames in total")
        result["fid"] = frechet_distance(real_all, fake_all)
    return result


def _add_features(feats: dict, batch: list, extractor: FeatureExtractor) -> None:
    feats["real"].append(np.asarray(extractor(np.stack([a for a, _ in batch])), np.float64))
    feats["fake"].append(np.asarray(extractor(np.stack([b for _, b in batch])), np.float64))


def _paired_frames(real: Path, fake: Path, stride: int, max_frames: int | None):
    """Yield (real, fake) RGB frame pairs of equal size."""
    count = 0
    for index, (a, b) in enumerate(zip(iter_single_frames(real, fps=None),
                                       iter_single_frames(fake, fps=None))):
        if index % stride:
            continue
        if a.shape != b.shape:
            raise UserError(f"{fake}: frame size {b.shape[1]}x{b.shape[0]} differs from "
                            f"{real} ({a.shape[1]}x{a.shape[0]})")
        yield a, b
        count += 1
        if max_frames is not None and count >= max_frames:
            return
