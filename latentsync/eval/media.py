"""Reading video frames and audio samples for the evaluation metrics (no temporary files)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np

from latentsync.audio import load_audio
from latentsync.errors import UserError

INT16_SCALE = 32768.0
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm")


def _open(path: Path):
    if not path.is_file():
        raise UserError(f"{path}: video file not found")
    try:
        return av.open(str(path))
    except av.FFmpegError as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise UserError(f"{path}: not a readable video file ({reason})") from None


def iter_frames(path: str | os.PathLike, fps: float | None = None,
                pix_fmt: str = "bgr24") -> Iterator[np.ndarray]:
    """Yield the frames of `path` as uint8 [H, W, 3] (`bgr24` or `rgb24`).

    With `fps`, frames are repeated or dropped by timestamp so that frame i shows time i/fps
    (what ffmpeg's `-r` output option does); without it every decoded frame is yielded once.
    """
    path = Path(path)
    with _open(path) as container:
        if not container.streams.video:
            raise UserError(f"{path}: no video stream in this file")
        stream = container.streams.video[0]
        next_slot = 0
        try:
            for frame in container.decode(stream):
                image = frame.to_ndarray(format=pix_fmt)
                if fps is None or frame.time is None:
                    yield image
                    continue
                slot = int(round(frame.time * fps))
                while next_slot <= slot:
                    yield image
                    next_slot += 1
        except av.FFmpegError as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise UserError(f"{path}: could not decode the video ({reason})") from None


def read_frames(path: str | os.PathLike, start: int = 0, count: int | None = None,
                fps: float | None = None, pix_fmt: str = "bgr24") -> np.ndarray:
    """Frames start .. start+count-1 of `path` as uint8 [N, H, W, 3]; all from `start` if no count."""
    frames = []
    for index, frame in enumerate(iter_frames(path, fps, pix_fmt)):
        if index < start:
            continue
        if count is not None and len(frames) == count:
            break
        frames.append(frame)
    if not frames:
        raise UserError(f"{path}: no frames at index {start} or later")
    return np.stack(frames)


def read_audio_int16(path: str | os.PathLike, sample_rate: int = 16000) -> np.ndarray:
    """The first audio stream of `path` as mono int16 samples at `sample_rate`."""
    wav = load_audio(path, sample_rate)
    return np.clip(np.round(wav * INT16_SCALE), -32768, 32767).astype(np.int16)


def list_videos(videos_dir: str | os.PathLike) -> list[Path]:
    """The video files directly inside `videos_dir`, sorted by name."""
    videos_dir = Path(videos_dir)
    if not videos_dir.is_dir():
        raise UserError(f"{videos_dir}: not a directory")
    videos = sorted(p for p in videos_dir.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    if not videos:
        raise UserError(f"{videos_dir}: no video files ({', '.join(VIDEO_SUFFIXES)})")
    return videos
