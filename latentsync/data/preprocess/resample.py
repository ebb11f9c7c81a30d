"""Stage 2: constant 25 fps H.264 video and 16 kHz mono AAC audio (frames are duplicated or
dropped by timestamp, never blended; see `latentsync.video.resample_video`)."""

from __future__ import annotations

from pathlib import Path

from latentsync.data.preprocess.common import (AUDIO_RATE, FPS, PipelineOptions, StageResult,
                                               output_name, public_mode)
from latentsync.errors import UserError
from latentsync.video import probe_video, resample_video

FOLDER = "resampled"


def resample(input_path: Path, output_dir: Path, options: PipelineOptions) -> StageResult:
    """Write `<name>.mp4` at 25 fps / 16 kHz mono into `output_dir`."""
    out = output_dir / output_name(input_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        resample_video(input_path, out, fps=FPS, audio_rate=AUDIO_RATE)
        info = probe_video(out)
    except (UserError, RuntimeError) as exc:
        return StageResult.drop("resample_failed", str(exc).splitlines()[0])
    if not info.has_audio:
        out.unlink()
        return StageResult.drop("resample_failed", f"{input_path}: the audio did not survive")
    return StageResult.keep(public_mode(out))
