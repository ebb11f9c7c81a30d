"""The logic behind the Gradio app (`gradio_app.py`), kept free of Gradio so it can be tested alone.

What it does for one request: check the uploads (size, duration, readable streams, a face at all),
make a fresh run folder `outputs/gradio/<timestamp>-<uuid>/`, run the same `LipsyncPipeline`
as `inference.sh` into `out.mp4` there, and turn the pipeline's `Progress` events into
(fraction, description). Settings are `LipsyncOptions` fields under their own names; the app's
own settings (`AppSettings`) are its command-line flags. The model files are `ModelFiles` of the
checkpoints folder (latentsync/loading.py), the same as the CLI's; missing files are listed
instead of crashing. `UploadLimits` is the one rule for what the app and the HTTP server accept.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from latentsync.cli_args import setting
from latentsync.constants import AUDIO_EXTENSIONS, MODEL_FPS, SAMPLE_RATE, VIDEO_EXTENSIONS
from latentsync.errors import UserError
from latentsync.io import atomic_write_text
from latentsync.loading import HOW_TO_GET, SMOKE_TEST, ModelSettings
from latentsync.pipelines.options import RANDOM_SEED, LipsyncOptions, option_field
from latentsync.pipelines.results import FACES, SEGMENTS, Progress
from latentsync.video import open_media, stream_duration

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
MAX_UPLOAD_MB = 200.0  # per uploaded file, in the app and the server alike
MAX_DURATION_S = 120.0  # per uploaded video or audio, in the app and the server alike
FACE_SAMPLES = 5  # frames looked at before a run to tell "no face at all"
# share of the progress bar per pipeline stage; "segments" and "writing" interleave, so the
# second part follows the frames written (each one after its segment is generated)
PROGRESS_CHECKS, PROGRESS_FACES = 0.05, 0.25

ProgressFn = Callable[[float, str], None]  # (fraction 0..1, description)
WarnFn = Callable[[str], None]


@dataclass(kw_only=True)
class UploadLimits:
    """What a front end that takes uploads (this app, the HTTP server) accepts per file: one rule,
    checked by `check_video` / `check_audio` before any heavy work."""

    max_upload_mb: float = setting(MAX_UPLOAD_MB, "largest accepted upload, per file (MB)")
    max_duration_s: float = setting(MAX_DURATION_S, "longest accepted video or audio (seconds)")


@dataclass(kw_only=True)
class AppSettings(UploadLimits, ModelSettings):
    """Everything the command line of gradio_app.py sets (one flag per field)."""

    host: str = setting("127.0.0.1", "address to bind (0.0.0.0 exposes the app on the network)")
    port: int = setting(7860, "port to listen on")
    share: bool = setting(False, "also open a public gradio.live link (off by default)")
    output_dir: str = setting("outputs/gradio", "run folders are created here")
    examples_dir: str | None = setting(str(REPO / "assets"), "folder of video/audio files shown as examples, "
                                       "paired by name (x_video.mp4 + x_audio.wav); default: the demo clips")
    min_steps: int = setting(10, "smallest inference-step value the slider allows")
    max_steps: int = setting(option_field("inference_steps").metadata["ui_max"], cli=False)
    max_queue: int = setting(20, "requests that may wait in the queue")

    def check(self) -> None:
        if not 1 <= self.min_steps <= self.max_steps:
            raise UserError(f"--min_steps {self.min_steps}: must be between 1 and {self.max_steps}")


def find_examples(folder: str | os.PathLike | None) -> list[list[str]]:
    """[video, audio] pairs from the media files in `folder` (by default assets/, the repo's demo clips).

    A video pairs with the audio of the same name once `video`/`audio` words are dropped
    (demo1_video.mp4 + demo1_audio.wav); leftovers pair up in sorted order.
    """
    if not folder or not Path(folder).is_dir():
        return []
    files = sorted(p for p in Path(folder).iterdir() if p.is_file())
    videos = [p for p in files if p.suffix.lower() in VIDEO_EXTENSIONS]
    audios = [p for p in files if p.suffix.lower() in AUDIO_EXTENSIONS]

    def key(p: Path) -> str:
        return p.stem.lower().replace("video", "").replace("audio", "").strip("_- .")

    pairs, unpaired = [], []
    for video in videos:
        match = next((a for a in audios if key(a) == key(video)), None)
        if match is None:
            unpaired.append(video)
        else:
            audios.remove(match)
            pairs.append([str(video), str(match)])
    pairs += [[str(v), str(a)] for v, a in zip(unpaired, audios)]
    return pairs


def new_run_dir(root: str | os.PathLike) -> Path:
    """A fresh folder `<root>/<YYYYmmdd-HHMMSS>-<uuid>`; never re-uses an existing one."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    while True:
        path = root / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:12]}"
        try:
            path.mkdir()
            return path
        except FileExistsError:  # astronomically unlikely; draw another id
            continue


def check_size(path: str, what: str, max_mb: float) -> None:
    size_mb = os.path.getsize(path) / 1e6
    if size_mb > max_mb:
        raise UserError(f"{Path(path).name}: the {what} is {size_mb:.1f} MB; this app accepts up to {max_mb:g} MB")


def check_video(path: str | None, max_mb: float, max_duration_s: float):
    """Probe the uploaded video (VideoInfo) or raise a UserError saying what is wrong with it."""
    from latentsync.video import probe_video

    if not path:
        raise UserError("no video: upload a video of the speaker first")
    check_size(path, "video", max_mb)
    info = probe_video(path)
    if info.num_frames == 0:
        raise UserError(f"{path}: the video has no frames")
    if info.duration > max_duration_s:
        raise UserError(f"{path}: the video is {info.duration:.1f} s long; this app accepts up to "
                        f"{max_duration_s:g} s")
    return info


def check_audio(path: str | None, max_mb: float, max_duration_s: float) -> float:
    """Duration in seconds of the uploaded/recorded speech, or a UserError saying what is wrong."""
    if not path:
        raise UserError("no audio: upload or record the speech to dub first")
    check_size(path, "audio", max_mb)
    with open_media(path, "audio", what="audio file") as container:
        duration = stream_duration(container, container.streams.audio[0])
    if not duration:  # some containers (raw streams) carry no duration: decode to know
        from latentsync.audio import load_audio

        duration = len(load_audio(path)) / SAMPLE_RATE
    if duration <= 0:
        raise UserError(f"{path}: the audio is empty")
    if duration > max_duration_s:
        raise UserError(f"{path}: the audio is {duration:.1f} s long; this app accepts up to {max_duration_s:g} s")
    return duration


def find_a_face(video_path: str, detector, num_frames: int, samples: int = FACE_SAMPLES) -> bool:
    """True if any of `samples` frames spread over the first `num_frames` (25 fps) shows a face."""
    from latentsync.video import iter_frames

    num_frames = max(int(num_frames), 1)
    wanted = sorted({round(i * (num_frames - 1) / max(samples - 1, 1)) for i in range(samples)})
    index = 0
    for chunk in iter_frames(video_path, fps=MODEL_FPS, chunk_size=16):
        for frame in chunk:
            if index in wanted and detector.detect(frame):
                return True
            index += 1
            if index > wanted[-1]:
                return False
    return False


def _progress_mapper(progress: ProgressFn | None) -> Callable[[Progress], None]:
    """Turn the pipeline's Progress events into one 0..1 bar with a description."""
    state = {"segment": 0, "segments": 0}

    def update(event: Progress) -> None:
        if progress is None:
            return
        if event.stage == FACES:
            progress(PROGRESS_CHECKS + PROGRESS_FACES * event.fraction,
                     f"Face detection: frame {event.done}/{event.total}")
        elif event.stage == SEGMENTS:  # each segment is generated just before its frames are written
            state["segment"], state["segments"] = event.done, event.total
        else:
            overall = PROGRESS_CHECKS + PROGRESS_FACES + (1 - PROGRESS_CHECKS - PROGRESS_FACES) * event.fraction
            progress(min(overall, 1.0), f"Lip sync: segment {state['segment']}/{state['segments']}, "
                                        f"frame {event.done}/{event.total} written")

    return update


@dataclass
class RunResult:
    path: Path
    seconds: float
    warnings: list[str] = field(default_factory=list)

    @property
    def summary(self) -> str:
        notes = "".join(f"\n\nNote: {w}" for w in self.warnings)
        return f"Done in {self.seconds:.1f} s. Saved to `{self.path}`.{notes}"


class LipsyncService:
    """Owns the loaded pipeline and runs one request at a time."""

    def __init__(self, settings: AppSettings):
        self.settings = settings
        self.files = settings.model_files()
        self.missing = self.files.missing()
        self.load_error: str | None = None
        self.pipeline = None
        self._lock = threading.Lock()  # the queue already serialises; this guards direct callers

    @property
    def ready(self) -> bool:
        return self.pipeline is not None

    def problem(self) -> str | None:
        """Why the app cannot dub anything right now (None when it can)."""
        if self.missing:
            return (f"Missing checkpoints in {self.settings.checkpoints_dir}:\n"
                    + "\n".join(f"  - {line}" for line in self.missing) + f"\n{HOW_TO_GET}\n{SMOKE_TEST}")
        return self.load_error

    def load(self) -> bool:
        """Load the models if every file is there; on failure remember why (never raise)."""
        if self.missing:
            return False
        from latentsync.pipelines.lipsync_pipeline import LipsyncPipeline

        s = self.settings
        try:
            self.pipeline = LipsyncPipeline.from_files(self.files, device=s.device, dtype=s.dtype,
                                                       face_backend=s.face_backend)
        except UserError as exc:
            self.load_error = f"Cannot load the models: {exc}"
        return self.ready

    def check_inputs(self, video: str | None, audio: str | None, inference_steps, guidance_scale, seed):
        """Validate the request before any heavy work; returns (VideoInfo, audio seconds, options)."""
        s = self.settings
        info = check_video(video, s.max_upload_mb, s.max_duration_s)
        duration = check_audio(audio, s.max_upload_mb, s.max_duration_s)
        inference_steps = int(round(float(inference_steps)))
        check_range("inference_steps", inference_steps, s.min_steps, s.max_steps)
        guidance = option_field("guidance_scale").metadata
        check_range("guidance_scale", float(guidance_scale), guidance["min"], guidance["ui_max"])
        if seed is None or (isinstance(seed, float) and not math.isfinite(seed)):
            seed = RANDOM_SEED
        seed = int(seed)
        options = LipsyncOptions(inference_steps=inference_steps, guidance_scale=float(guidance_scale),
                                 seed=None if seed < 0 else seed, show_progress=False)
        return info, duration, options

    def run(self, video: str | None, audio: str | None, inference_steps: int = LipsyncOptions.inference_steps,
            guidance_scale: float = LipsyncOptions.guidance_scale, seed=LipsyncOptions.seed,
            progress: ProgressFn | None = None, warn: WarnFn | None = None) -> RunResult:
        """Dub `video` with `audio` into a new run folder; UserError for anything the user can fix."""
        if not self.ready:
            raise UserError(self.problem() or "the models are not loaded")
        start = time.monotonic()
        if progress:
            progress(0.0, "Checking the uploads")
        info, audio_s, options = self.check_inputs(video, audio, inference_steps, guidance_scale, seed)
        from latentsync.video import count_frames

        # frames the pipeline reads (at 25 fps; info.num_frames counts the source rate)
        used_frames = min(count_frames(video, MODEL_FPS), math.ceil(audio_s * MODEL_FPS))
        with self._lock:  # the detector and the models are not safe to share between threads
            if progress:
                progress(0.0, "Looking for a face")
            if not find_a_face(video, self.pipeline.face_detector, used_frames):
                raise UserError(f"{video}: no face found in the video (looked at {FACE_SAMPLES} frames); "
                                f"lip sync needs the speaker's face clearly visible")
            run_dir = new_run_dir(self.settings.output_dir)
            out = run_dir / "out.mp4"
            _write_settings(run_dir / "settings.json", video, audio, options)
            if progress:
                progress(PROGRESS_CHECKS, "Loading the speech")
            result = self.pipeline(video, audio, out, options, progress=_progress_mapper(progress))
        for message in result.warnings:
            if warn:
                warn(message)
        return RunResult(result.output_path, time.monotonic() - start, result.warnings)


def check_range(name: str, value, low, high) -> None:
    """UserError naming the option when `value` is outside what the app offers."""
    if not low <= value <= high:
        raise UserError(f"{name} {value:g}: choose between {low:g} and {high:g}")


def _write_settings(path: Path, video: str, audio: str, options) -> None:
    """Record what produced a run (input names and options) next to its output."""
    record = {"video": Path(video).name, "audio": Path(audio).name, "options": asdict(options)}
    atomic_write_text(path, json.dumps(record, indent=2, default=str))


def friendly(message: str, *paths: str | None) -> str:
    """A UserError message with upload paths shortened to their file names."""
    for path in paths:
        if path:
            message = message.replace(str(path), Path(path).name)
    return message
