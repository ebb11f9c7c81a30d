"""Training samples for SyncNet: a face clip, a mel window and an in-sync / off-sync label (see docs/training.md).

One sample: pick a clip at random; a start frame s and a different start w; the mel window of
the frames starting at s (docs/audio-features.md); then with probability 1/2 the frames starting at s (label
1, in sync) or the frames starting at w (label 0, off sync). Frames are resized to the training
resolution (a no-op on data-pipeline output, which is already aligned at 256 px), scaled to
[-1, 1], stacked frame-major on the channels and cut to their lower half if configured:

    frames [3F, res/2 or res, res] float32   mel [1, 80, ceil(F*80/fps)] float32   label float32

Every draw comes from a `random.Random` keyed by (seed, epoch, index), never from the global
RNGs, so a sample depends only on its index: validation sets are reproducible and a resumed
training run sees exactly the batches an uninterrupted run would, with any number of workers.

Differences from the reference (docs/reference-differences.md, items 8 and 12): the mel cache is keyed by the file's
path, size and modification time plus the mel settings (not by the basename) and written
atomically; a broken clip is logged and another one drawn, and after `max_consecutive_failures`
failures in a row the dataset raises instead of retrying forever; s is drawn only among the
starts whose mel window fits, instead of redrawing the whole sample when the audio is short.
"""

import os
import random
from pathlib import Path

import av
import numpy as np
import torch

from latentsync.audio import mel_window, mel_window_length
from latentsync.constants import MODEL_FPS, SAMPLE_RATE
from latentsync.data.common import ClipFrames, MelCache, draw_sample, find_videos, frames_to_pixels, read_file_list, sample_rng
from latentsync.errors import UserError

MAX_CONSECUTIVE_FAILURES = 50
CLIP_ERRORS = (UserError, OSError, ValueError, IndexError, RuntimeError, EOFError, av.FFmpegError)


# --------------------------------------------------------------------------------------------
# file lists


def resolve_videos(source) -> list[str]:
    """Video paths from a list of paths, a file-list file or a data folder."""
    if isinstance(source, (str, os.PathLike)):
        if not str(source):
            raise UserError("no training data: set data.train_fileslist or data.train_data_dir")
        return find_videos(source) if Path(source).is_dir() else read_file_list(source)
    paths = [str(p) for p in source]
    if not paths:
        raise UserError("no videos given to the dataset")
    return paths


def videos_from_config(fileslist: str | None, data_dir: str | None, what: str = "train",
                       required: bool = False) -> list[str] | None:
    """The clips of every trainer: the paths named by `data.<what>_fileslist` (preferred), else every
    `.mp4` below `data.<what>_data_dir` (searched recursively); None if neither is set (UserError
    when `required`). UserError naming the setting for a missing or empty list or folder."""
    try:
        if fileslist:
            return read_file_list(fileslist)
        if data_dir:
            return find_videos(data_dir, recursive=True)
    except UserError as e:
        raise UserError(f"data.{what}_{'fileslist' if fileslist else 'data_dir'}: {e}") from None
    if required:
        raise UserError(f"no {'training' if what == 'train' else what} data: set data.{what}_fileslist or "
                        f"data.{what}_data_dir")
    return None


# --------------------------------------------------------------------------------------------
# helpers


def frames_to_tensor(frames: np.ndarray, resolution: int, lower_half: bool) -> torch.Tensor:
    """uint8 RGB `[F, H, W, 3]` -> float `[3F, res/2 or res, res]` in [-1, 1], frame-major channels.

    Resizes with bicubic + antialias only when the frames are not already res x res.
    """
    x = frames_to_pixels(frames, resolution)  # [F, 3, res, res]
    if lower_half:
        x = x[:, :, resolution // 2:, :]
    return x.reshape(-1, *x.shape[2:])  # channel index = 3 * frame + colour


# --------------------------------------------------------------------------------------------
# dataset


class SyncNetDataset(torch.utils.data.Dataset):
    """In-sync / off-sync (frames, mel) pairs drawn from talking-face clips (docs/training.md).

    `source`: a list of video paths, a file-list file (one path per line) or a folder searched
    recursively for `.mp4`. The clip is drawn at random for every sample (the index only keys
    the RNG), so `length` is just how many samples one pass yields (default: number of clips).
    `cache_frames` keeps every decoded, resized clip in memory: for small data sets only.
    `windows_per_clip` > 1 draws that many consecutive samples (indices k*n ... k*n+n-1) from one
    clip, each with its own windows and label: in a batch the windows of one clip at other times
    are then the hard negatives of its in-sync samples (`contrastive_sync_loss`); 1 (the reference)
    draws a clip per sample.
    """

    def __init__(self, source, num_frames: int = 16, resolution: int = 256, lower_half: bool = True,
                 mel_cache_dir: str | os.PathLike | None = None, seed: int = 42, fps: float = MODEL_FPS,
                 sample_rate: int = SAMPLE_RATE, length: int | None = None, cache_frames: bool = False,
                 max_consecutive_failures: int = MAX_CONSECUTIVE_FAILURES, windows_per_clip: int = 1):
        if int(windows_per_clip) < 1:
            raise UserError(f"data.windows_per_clip must be at least 1, got {windows_per_clip}")
        self.paths = resolve_videos(source)
        self.windows_per_clip = int(windows_per_clip)
        self.num_frames = int(num_frames)
        self.resolution = int(resolution)
        self.lower_half = bool(lower_half)
        self.seed = int(seed)
        self.fps = fps
        self.length = len(self.paths) if length is None else int(length)
        self.mel_length = mel_window_length(self.num_frames, fps)
        self.mels = MelCache(mel_cache_dir, sample_rate, keep_in_memory=cache_frames)
        self.clips = ClipFrames(self.num_frames, self.resolution, fps, cache_frames)
        self.max_consecutive_failures = max_consecutive_failures
        self.epoch = 0
        self._reported: set[str] = set()

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        """Draw a different (but again reproducible) set of samples for another pass."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = sample_rng("syncnet-sample", self.seed, self.epoch, int(index))
        sample_clip, clip_rng = self.sample_clip, rng
        if self.windows_per_clip > 1:  # the group's clip (and any re-draws) from the group's RNG
            clip_rng = sample_rng("syncnet-group", self.seed, self.epoch, int(index) // self.windows_per_clip)
            sample_clip = lambda path, _: self.sample_clip(path, rng)  # noqa: E731
        return draw_sample(self.paths, clip_rng, sample_clip, CLIP_ERRORS, self._reported,
                           self.max_consecutive_failures, "too short for two windows of frames with audio")

    def sample_clip(self, path: str, rng: random.Random) -> dict[str, torch.Tensor] | None:
        """One sample from `path`, or None when the clip is too short."""
        num_frames = self.clips.length(path)
        mel = self.mels.get(path)
        F_ = self.num_frames
        if num_frames < 2 * F_:
            return None
        # starts whose F frames exist and whose mel window fits in the audio
        last_start = num_frames - F_
        while last_start >= 0 and mel_window(mel, last_start, F_, self.fps) is None:
            last_start -= 1
        if last_start < 0:
            return None
        start = rng.randint(0, last_start)
        wrong = rng.randint(0, num_frames - F_ - 1)
        wrong += wrong >= start  # uniform over [0, N-F] without s
        in_sync = rng.random() < 0.5
        frames = self.clips.window(path, start if in_sync else wrong)
        audio = mel_window(mel, start, F_, self.fps)
        return {
            "frames": frames_to_tensor(frames, self.resolution, self.lower_half),
            "mel": torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None],
            "label": torch.tensor(1.0 if in_sync else 0.0),
        }
