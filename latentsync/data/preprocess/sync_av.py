"""Stage 7: audio-visual sync with the SyncNet v2 evaluation network (see docs/evaluation.md).

A clip is kept when its confidence (LSE-C) is at least `sync_conf_threshold` (3) and the
detected offset is at most `max_sync_offset` (6) frames either way. The audio is then moved by
the offset so that the kept clip is in sync (offset 0): offset > 0 means the audio is early,
so it is delayed by offset / 25 s (silence in front); offset < 0 advances it (silence at the
end). The video stream is copied; the audio is re-encoded to AAC at 16 kHz mono with the
length of the video. Offset 0 links the clip through unchanged.
"""

from __future__ import annotations

from pathlib import Path

from latentsync.constants import MODEL_FPS, SAMPLE_RATE
from latentsync.data.preprocess.common import (PipelineOptions, StageResult, face_detector, link_or_copy,
                                               syncnet, torch_device)
from latentsync.errors import UserError
from latentsync.io import run_ffmpeg
from latentsync.video import probe_video

FOLDER = "av_synced"


def shift_audio(input_path: Path, out_path: Path, offset_frames: int, fps: int = MODEL_FPS) -> None:
    """Write `out_path` = `input_path` with its audio delayed by offset_frames / fps seconds
    (negative: advanced), video copied, audio length = video length."""
    duration = probe_video(input_path).duration
    args = [
        "-i", str(input_path), "-itsoffset", f"{offset_frames / fps:.6f}", "-i", str(input_path),
        "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy",
        # samples before t=0 are cut, a late start is filled with silence, the end is padded
        "-af", "aresample=async=1:first_pts=0,apad",
        "-c:a", "aac", "-ar", str(SAMPLE_RATE), "-ac", "1", "-t", f"{duration:.6f}",
        "-movflags", "+faststart", "-f", "mp4",
    ]  # fmt: skip
    run_ffmpeg(args, out_path, f"shift the audio of {input_path} by {offset_frames} frames")


def sync_av(input_path: Path, output_dir: Path, options: PipelineOptions) -> StageResult:
    """Score the clip; keep it (audio moved to offset 0) in `output_dir` if it is in sync."""
    from latentsync.eval.syncnet_v2 import sync_confidence

    try:
        score = sync_confidence(input_path, syncnet(options), face_detector(),
                                device=torch_device(options))
    except UserError as exc:
        return StageResult.drop("sync_failed", str(exc))
    offset, confidence = int(score["offset"]), float(score["lse_c"])
    measured = f"confidence {confidence:.3f}, offset {offset} frames"
    if confidence < options.sync_conf_threshold:
        return StageResult.drop("low_sync_confidence",
                                f"{measured}: confidence < {options.sync_conf_threshold:g}")
    if abs(offset) > options.max_sync_offset:
        return StageResult.drop("large_offset",
                                f"{measured}: |offset| > {options.max_sync_offset}")
    out = output_dir / input_path.name
    if offset == 0:
        link_or_copy(input_path, out)
    else:
        output_dir.mkdir(parents=True, exist_ok=True)
        shift_audio(input_path, out, offset)
    return StageResult.keep(out, detail=measured)
