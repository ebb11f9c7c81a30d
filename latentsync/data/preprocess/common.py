"""What every data-pipeline stage shares: options, results, atomic file helpers, ffmpeg cuts and
the per-process cache of face detectors and networks.

A stage is a function `(input_path, output_dir, options) -> StageResult`. It writes its outputs
into `output_dir` under temporary names and renames them when complete, so an output that
exists is complete. It never touches its input.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from latentsync.checkpoints import CHECKPOINTS_DIR, default_path
from latentsync.constants import MODEL_FPS, OUTPUT_CRF, SAMPLE_RATE
from latentsync.io import atomic_output, discard, run_ffmpeg
from latentsync.video import keyframe_args

REENCODE_MODES = ("auto", "always")  # auto: copy streams that conform (docs/data-pipeline.md)


@dataclass
class PipelineOptions:
    """Everything a run needs; stage functions read the fields they use."""

    input_dir: str = "raw"
    output_dir: str = "processed"
    resolution: int = 256  # aligned face size (256 or 512)
    min_face_size: int = 256  # stage 5: face box width and height in pixels
    face_check_stride: int = 1  # stage 5: check every Nth frame (1 = every frame)
    segment_seconds: float = 5.0  # stage 4: pieces of 5 to < 10 s
    reencode: str = "auto"  # stages 2-4: "auto" stream-copies what conforms, "always" re-encodes
    sync_conf_threshold: float = 3.0  # stage 7: minimum SyncNet v2 confidence (LSE-C)
    max_sync_offset: int = 6  # stage 7: maximum |audio-video offset| in frames
    quality_threshold: float = 40.0  # stage 8: minimum hyperIQA score
    checkpoints_dir: str = CHECKPOINTS_DIR
    device: str = "auto"  # torch device of stages 7 and 8
    num_workers: int = 1
    device_workers: int | None = None  # processes of stages 7 and 8 (they run networks); None: num_workers
    shard_index: int = 0
    num_shards: int = 1
    ray_address: str | None = None  # "local" starts a one-machine Ray instance
    skip_stages: tuple[int, ...] = ()
    progress: bool = True

    @property
    def syncnet_path(self) -> Path:
        return default_path("syncnet_v2", self.checkpoints_dir)

    @property
    def hyper_iqa_path(self) -> Path:
        return default_path("hyper_iqa", self.checkpoints_dir)


@dataclass
class StageResult:
    """Outcome of one input in one stage: the kept outputs, or why the input was dropped.

    `reason` is a short code (summary tables group by it), `detail` a readable sentence.
    `error=True` marks an unexpected failure: reported, but retried on the next run.
    """

    outputs: list[str] = field(default_factory=list)
    reason: str = ""
    detail: str = ""
    error: bool = False

    @property
    def kept(self) -> bool:
        return not self.reason

    @classmethod
    def keep(cls, *outputs: os.PathLike | str, detail: str = "") -> "StageResult":
        return cls(outputs=[os.fspath(p) for p in outputs], detail=detail)

    @classmethod
    def drop(cls, reason: str, detail: str = "") -> "StageResult":
        return cls(reason=reason, detail=detail)


# --------------------------------------------------------------------------------------------
# files


def link_or_copy(src: Path, dst: Path) -> Path:
    """Make `dst` hold the bytes of `src`: a hard link if possible, else a copy; atomic."""
    with atomic_output(dst) as temp:
        discard(temp)
        try:
            os.link(src, temp)
        except OSError:  # other file system, or links not supported
            shutil.copyfile(src, temp)
    return dst


def output_name(input_path: Path, suffix: str = "") -> str:
    """`<stem><suffix>.mp4` for .mp4 inputs; other containers keep their extension in the name
    (`clip.mov` -> `clip.mov<suffix>.mp4`) so that `clip.mp4` and `clip.mov` cannot collide."""
    base = input_path.stem if input_path.suffix.lower() == ".mp4" else input_path.name
    return f"{base}{suffix}.mp4"


def segment_frames(options: PipelineOptions) -> int:
    """Frames of the shortest stage-4 piece (125 at 5 s): also the key frame interval of the
    clips stages 2 and 3 encode, so that stage 4 can cut them by stream copy."""
    return round(options.segment_seconds * MODEL_FPS)


def cut_clip(src: Path, dst: Path, start_frame: int, num_frames: int, fps: int = MODEL_FPS,
             keyframe_interval: int | None = None, copy_video: bool = False) -> None:
    """Frames [start, start + num) of a constant-`fps` clip and the matching audio (AAC 16 kHz
    mono, sample-accurate: a few ms of work).

    Re-encoded (default): input seeking with re-encoding is frame accurate (ffmpeg decodes from
    the key frame before the start and discards what precedes it); H.264 at OUTPUT_CRF, a key frame
    every `keyframe_interval` frames if given. `copy_video`: the video stream is copied, which is
    only valid where `streams.StreamLayout.can_copy(start, start + num)` holds (the input is
    seeked to the key frame at `start`, and the first `num` packets in decode order are then
    exactly the frames).
    """
    start, duration = start_frame / fps, num_frames / fps
    video = ["-c:v", "copy"] if copy_video else \
        ["-c:v", "libx264", "-crf", str(OUTPUT_CRF), "-pix_fmt", "yuv420p", *keyframe_args(keyframe_interval)]
    args = [
        "-ss", f"{start:.6f}", "-i", str(src), "-t", f"{duration:.6f}",
        "-map", "0:v:0", "-map", "0:a:0?", "-frames:v", str(num_frames), *video,
        "-c:a", "aac", "-ar", str(SAMPLE_RATE), "-ac", "1",
        "-movflags", "+faststart", "-f", "mp4",
    ]  # fmt: skip
    verb = "copy" if copy_video else "cut"
    run_ffmpeg(args, dst, f"{verb} frames {start_frame}-{start_frame + num_frames - 1} of {src}")


# --------------------------------------------------------------------------------------------
# per-process resources (each worker builds its detector and networks once)

_RESOURCES: dict = {}


def face_detector():
    """This process's MediaPipe face detector (every frame detected independently)."""
    if "detector" not in _RESOURCES:
        from latentsync.face import make_face_detector

        _RESOURCES["detector"] = make_face_detector("mediapipe")
    return _RESOURCES["detector"]


def torch_device(options: PipelineOptions):
    from latentsync.device import pick_device

    return pick_device(options.device)


def syncnet(options: PipelineOptions):
    """This process's SyncNet v2 evaluation network (loaded once per checkpoint path)."""
    key = ("syncnet", str(options.syncnet_path), options.device)
    if key not in _RESOURCES:
        from latentsync.eval.syncnet_v2 import load_syncnet_v2

        _RESOURCES[key] = load_syncnet_v2(options.syncnet_path, torch_device(options))
    return _RESOURCES[key]


def hyper_iqa(options: PipelineOptions):
    """This process's hyperIQA network (loaded once per checkpoint path)."""
    key = ("hyper_iqa", str(options.hyper_iqa_path), options.device)
    if key not in _RESOURCES:
        from latentsync.eval.hyper_iqa import load_hyper_iqa

        _RESOURCES[key] = load_hyper_iqa(options.hyper_iqa_path, torch_device(options))
    return _RESOURCES[key]
