"""What the SyncNet and UNet training datasets share: reading file lists and data folders, the
per-sample RNG, drawing clips until one gives a sample (with a once-per-clip skip warning),
reading windows of frames, and the on-disk SyncNet mel cache."""

import hashlib
import logging
import os
import random
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from latentsync.audio import load_audio, syncnet_melspectrogram
from latentsync.constants import SAMPLE_RATE
from latentsync.errors import UserError
from latentsync.io import atomic_open
from latentsync.video import count_frames, read_frames

logger = logging.getLogger(__name__)

VIDEO_SUFFIX = ".mp4"
MEL_CACHE_VERSION = 1  # bump when the mel computation changes (invalidates cached files)
MEL_BANDS = 80
T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# file lists


def read_file_list(list_path: str | os.PathLike) -> list[str]:
    """Video paths of a file list: one per line; blank lines and '#' comments skipped.

    Relative paths are taken relative to the list's folder.
    """
    list_path = Path(list_path)
    if not list_path.is_file():
        raise UserError(f"{list_path}: file list not found")
    try:
        lines = list_path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{list_path}: cannot read the file list ({e})") from None
    paths = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            path = Path(line)
            paths.append(str(path if path.is_absolute() else list_path.parent / path))
    if not paths:
        raise UserError(f"{list_path}: the file list names no videos")
    return paths


def find_videos(data_dir: str | os.PathLike, recursive: bool = True) -> list[str]:
    """The `.mp4` files in `data_dir` (and its subfolders if `recursive`), sorted so the order is reproducible."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"{data_dir}: data folder not found")
    pattern = f"*{VIDEO_SUFFIX}"
    found = data_dir.rglob(pattern) if recursive else data_dir.glob(pattern)
    paths = sorted(str(p) for p in found if p.is_file())
    if not paths:
        raise UserError(f"{data_dir}: no {VIDEO_SUFFIX} files in this folder")
    return paths


# --------------------------------------------------------------------------------------------
# frames


def resized_frames(frames: np.ndarray, resolution: int) -> torch.Tensor:
    """uint8 RGB `[F, H, W, 3]` -> float `[F, 3, res, res]` with values 0-255.

    Bicubic + antialias resize (rounded, as if done in uint8) only when the frames are not res x res
    (a no-op for data-pipeline output).
    """
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    if x.shape[-2:] != (resolution, resolution):
        x = F.interpolate(x, size=(resolution, resolution), mode="bicubic", antialias=True, align_corners=False)
        x = x.clamp(0.0, 255.0).round()
    return x


def frames_to_pixels(frames: np.ndarray, resolution: int) -> torch.Tensor:
    """uint8 RGB `[F, H, W, 3]` -> float32 `[F, 3, res, res]` in [-1, 1] (resized if needed)."""
    return resized_frames(frames, resolution) / 127.5 - 1.0


def resized_uint8(frames: np.ndarray, resolution: int) -> np.ndarray:
    """uint8 RGB frames at res x res (the input itself when already that size)."""
    if frames.shape[1:3] == (resolution, resolution):
        return frames
    return resized_frames(frames, resolution).to(torch.uint8).permute(0, 2, 3, 1).numpy()


# --------------------------------------------------------------------------------------------
# sampling


def sample_rng(kind: str, seed: int, epoch: int, index: int) -> random.Random:
    """A private RNG for one sample of a `kind` of dataset, the same in every process and Python version."""
    digest = hashlib.sha256(f"{kind}/{seed}/{epoch}/{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def report_skip(reported: set[str], path: str, reason: str) -> None:
    """One warning per broken clip and process (later skips of it, remembered in `reported`, are debug messages)."""
    level = logging.DEBUG if path in reported else logging.WARNING
    reported.add(path)
    logger.log(level, "skipping clip %s (%s); drawing another one", path, reason)


def error_line(error: BaseException) -> str:
    """`Type: first line of the message` (just the type when the message is empty)."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def draw_sample(paths: Sequence[str], rng: random.Random, sample_clip: Callable[[str, random.Random], T | None],
                errors: tuple[type[BaseException], ...], reported: set[str], max_failures: int,
                too_short: str) -> T:
    """`sample_clip(path, rng)` of a clip drawn from `paths`, drawing again (with a once-per-clip
    warning) while the clip raises one of `errors` or is too short (None). After `max_failures`
    failures in a row: a UserError naming the last clip and why, instead of looping forever."""
    last = ""
    for _ in range(max_failures):
        path = rng.choice(paths)
        try:
            sample, reason = sample_clip(path, rng), too_short
        except errors as e:
            sample, reason = None, error_line(e)
        if sample is not None:
            return sample
        last = f"{path}: {reason}"
        report_skip(reported, path, reason)
    raise UserError(f"{max_failures} clips in a row could not be used (check the data list); last: {last}")


class ClipFrames:
    """Frame counts and windows of `num_frames` frames of training clips at `fps`, per process.

    Lengths are remembered; with `keep_in_memory` every clip is decoded once, resized to
    `resolution` and kept (tiny data sets and overfit runs only), else each window is decoded.
    """

    def __init__(self, num_frames: int, resolution: int, fps: float, keep_in_memory: bool = False):
        self.num_frames, self.resolution, self.fps = int(num_frames), int(resolution), fps
        self.keep_in_memory = keep_in_memory
        self._lengths: dict[str, int] = {}
        self._clips: dict[str, np.ndarray] = {}

    def length(self, path: str) -> int:
        if path not in self._lengths:
            self._lengths[path] = count_frames(path, self.fps)
        return self._lengths[path]

    def window(self, path: str, start: int) -> np.ndarray:
        """uint8 frames start .. start+F-1 (at the training size when clips are kept in memory)."""
        if not self.keep_in_memory:
            return read_frames(path, start, self.num_frames, fps=self.fps)
        if path not in self._clips:
            frames = read_frames(path, 0, self.length(path), fps=self.fps)
            self._clips[path] = resized_uint8(frames, self.resolution)
        return self._clips[path][start:start + self.num_frames]


# --------------------------------------------------------------------------------------------
# mel cache


class MelCache:
    """SyncNet mel spectrograms `[80, T]` (float32) of whole clips, cached on disk when a folder is
    given, and also in memory when `keep_in_memory`.

    The key hashes the absolute path, size, modification time and the mel settings, so an edited
    or replaced clip is recomputed and clips with equal names in different folders never collide.
    """

    def __init__(self, cache_dir: str | os.PathLike | None, sample_rate: int = SAMPLE_RATE, keep_in_memory: bool = False):
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.sample_rate = sample_rate
        self.memory: dict[str, np.ndarray] | None = {} if keep_in_memory else None

    def key(self, path: str) -> str:
        stat = os.stat(path)
        text = f"v{MEL_CACHE_VERSION}|{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}|sr{self.sample_rate}"
        return hashlib.sha256(text.encode()).hexdigest()

    def get(self, path: str) -> np.ndarray:
        if self.memory is None:
            return self.load(path)
        if path not in self.memory:
            self.memory[path] = self.load(path)
        return self.memory[path]

    def load(self, path: str) -> np.ndarray:
        """From the disk cache, or computed (and then cached)."""
        if self.cache_dir is None:
            return self.compute(path)
        cache_path = self.cache_dir / f"{self.key(path)}.npy"
        mel = self.read(cache_path)
        if mel is None:
            mel = self.compute(path)
            self.write(cache_path, mel)
        return mel

    def compute(self, path: str) -> np.ndarray:
        return syncnet_melspectrogram(load_audio(path, self.sample_rate)).astype(np.float32)

    @staticmethod
    def read(cache_path: Path) -> np.ndarray | None:
        """The cached mel, or None if absent; an unreadable file is reported and recomputed."""
        if not cache_path.is_file():
            return None
        try:
            mel = np.load(cache_path, allow_pickle=False)
            if mel.ndim != 2 or mel.shape[0] != MEL_BANDS or mel.dtype != np.float32:
                raise ValueError(f"unexpected array {mel.dtype} {mel.shape}")
        except (OSError, ValueError, EOFError) as e:
            logger.warning("%s: ignoring unreadable mel cache file (%s)", cache_path, e)
            return None
        return mel

    @staticmethod
    def write(cache_path: Path, mel: np.ndarray) -> None:
        """Save under a temporary name and rename, so concurrent readers never see half a file."""
        with atomic_open(cache_path, "wb") as f:
            np.save(f, mel, allow_pickle=False)
