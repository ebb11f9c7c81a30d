"""Stage 1: keep only videos that decode and have a video and an audio stream of some length.

Unlike the reference (which deletes broken files from the raw folder; docs/reference-differences.md item 9), raw inputs
are never touched: valid inputs are hard-linked (or copied) into the stage folder.
"""

from __future__ import annotations

from pathlib import Path

import av

from latentsync.data.preprocess.common import PipelineOptions, StageResult, link_or_copy
from latentsync.errors import UserError
from latentsync.video import av_reason, open_media, probe_video

FOLDER = "valid"
AUDIO_PROBE_FRAMES = 4  # decode this many audio frames to prove the audio is readable


def remove_broken(input_path: Path, output_dir: Path, options: PipelineOptions) -> StageResult:
    """Keep `input_path` (linked into `output_dir`) if it is a usable audio+video file."""
    try:
        info = probe_video(input_path)
    except UserError as exc:
        return StageResult.drop("unreadable", str(exc))
    if info.num_frames <= 0 or info.duration <= 0:
        return StageResult.drop("zero_length", f"{input_path}: the video has no length")
    if not info.has_audio:
        return StageResult.drop("no_audio", f"{input_path}: contains no audio stream")
    problem = _audio_problem(input_path)
    if problem:
        return StageResult.drop("no_audio", f"{input_path}: {problem}")
    return StageResult.keep(link_or_copy(input_path, output_dir / input_path.name))


def _audio_problem(path: Path) -> str:
    """Why the first audio stream cannot be decoded ('' if a few frames decode fine)."""
    with open_media(path, "audio") as container:
        decoded = 0
        try:
            for frame in container.decode(audio=0):
                decoded += frame.samples > 0
                if decoded >= AUDIO_PROBE_FRAMES:
                    break
        except av.FFmpegError as exc:
            return f"cannot decode the audio ({av_reason(exc)})"
    return "" if decoded else "the audio stream has no samples"
