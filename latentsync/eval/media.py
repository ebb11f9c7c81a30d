"""Audio samples and video lists for the evaluation metrics (no temporary files).

Frames come from `latentsync.video` (`iter_single_frames`, `read_frames`): uint8 RGB in display
orientation, resampled by the one frame-rate rule documented there.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from latentsync.audio import load_audio
from latentsync.constants import INT16_SCALE, SAMPLE_RATE, VIDEO_EXTENSIONS
from latentsync.errors import UserError

INT16_MIN, INT16_MAX = -32768, 32767


def read_audio_int16(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The first audio stream of `path` as mono int16 samples at `sample_rate`."""
    wav = load_audio(path, sample_rate)
    return np.clip(np.round(wav * INT16_SCALE), INT16_MIN, INT16_MAX).astype(np.int16)


def list_videos(videos_dir: str | os.PathLike) -> list[Path]:
    """The video files directly inside `videos_dir`, sorted by name."""
    videos_dir = Path(videos_dir)
    if not videos_dir.is_dir():
        raise UserError(f"{videos_dir}: not a directory")
    videos = sorted(p for p in videos_dir.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS)
    if not videos:
        raise UserError(f"{videos_dir}: no video files ({', '.join(VIDEO_EXTENSIONS)})")
    return videos
