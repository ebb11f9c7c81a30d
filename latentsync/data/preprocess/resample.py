"""Stage 2: constant 25 fps video and 16 kHz mono AAC audio (frames are duplicated or dropped by
timestamp, never blended; see `latentsync.video.resample_video`).

`--reencode auto` (default): a video stream that already conforms (H.264, HEVC or MPEG-4 in
yuv420p, every frame on the 25 fps grid, even size, no rotation; see `streams`) is stream-copied
and only the audio is re-encoded unless it is already AAC 16 kHz mono. Any other video is
re-encoded to H.264 with a key frame every 125 frames (one 5 s piece), so that stage 4 can cut
it by stream copy: the clip is encoded once. `--reencode always` re-encodes every clip as
`resample_video` does (the earlier behaviour).
"""

from __future__ import annotations

from pathlib import Path

from latentsync.constants import MODEL_FPS, SAMPLE_RATE
from latentsync.data.preprocess.common import PipelineOptions, StageResult, output_name, segment_frames
from latentsync.data.preprocess.streams import read_layout
from latentsync.errors import UserError
from latentsync.io import run_ffmpeg
from latentsync.video import probe_video, resample_video

FOLDER = "resampled"
COPIED, AUDIO_ONLY, REENCODED = "stream copy", "video copied, audio re-encoded", "re-encoded"


def resample(input_path: Path, output_dir: Path, options: PipelineOptions) -> StageResult:
    """Write `<name>.mp4` at 25 fps / 16 kHz mono into `output_dir`; the detail says how."""
    out = output_dir / output_name(input_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        how = write_resampled(input_path, out, options)
        info = probe_video(out)
    except (UserError, RuntimeError) as exc:
        return StageResult.drop("resample_failed", str(exc).splitlines()[0])
    if not info.has_audio:
        out.unlink()
        return StageResult.drop("resample_failed", f"{input_path}: the audio did not survive")
    return StageResult.keep(out, detail=how)


def write_resampled(input_path: Path, out: Path, options: PipelineOptions) -> str:
    """Write the resampled clip; returns COPIED, AUDIO_ONLY or REENCODED."""
    if options.reencode == "always":
        resample_video(input_path, out, fps=MODEL_FPS, audio_rate=SAMPLE_RATE)
        return REENCODED
    info, layout = probe_video(input_path), read_layout(input_path)
    if layout.video_copyable and info.rotation == 0 and not (info.width % 2 or info.height % 2):
        audio = ["-c:a", "copy"] if layout.audio_conforms else \
            ["-c:a", "aac", "-ar", str(SAMPLE_RATE), "-ac", "1"]
        args = ["-i", info.path, "-map", "0:v:0", "-map", "0:a:0?", "-c:v", "copy", *audio,
                "-movflags", "+faststart", "-f", "mp4"]
        run_ffmpeg(args, out, f"copy the streams of {info.path}")
        return COPIED if layout.audio_conforms else AUDIO_ONLY
    resample_video(input_path, out, fps=MODEL_FPS, audio_rate=SAMPLE_RATE,
                   keyframe_interval=segment_frames(options), info=info)
    return REENCODED

