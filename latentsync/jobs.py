"""One dubbing job, as the HTTP server, the Ray batch runner and the ComfyUI node run it.

Everything these front ends need from the pipeline goes through the three functions at the
bottom of this module (`job_options`, `load_pipeline`, `run_dub`), so a change of the pipeline's
API is absorbed here. Job options are plain dicts of `LipsyncOptions` values under their
command-line meanings (seed -1 = random, output_fps "original" = the input's rate), so they can
be stored as JSON and sent to other processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from latentsync.face.detectors import DEFAULT_FACE_BACKEND
from latentsync.io import atomic_output
from latentsync.loading import ModelFiles
from latentsync.pipelines.options import ORIGINAL_FPS, LipsyncOptions, options_from_values

FACE_SHARE = 0.3  # share of the progress bar taken by the face pass; the rest follows the frames written

ProgressFn = Callable[[float, str], None]  # (fraction 0..1, stage)


@dataclass(frozen=True)
class PipelineSpec:
    """What one pipeline is loaded from: its files and where it runs (hashable and picklable, so
    it can be sent to a Ray worker, which keeps one pipeline per spec)."""

    files: ModelFiles
    device: str | None = None  # None or "auto": the best available
    dtype: str | None = None
    face_backend: str = DEFAULT_FACE_BACKEND

    def check(self) -> "PipelineSpec":
        """The spec with its files checked (UserError listing what is missing and where to get it)."""
        return PipelineSpec(self.files.check(), self.device, self.dtype, self.face_backend)


def _fraction_reporter(on_progress: ProgressFn | None):
    """Turn the pipeline's Progress events into one 0..1 fraction (faces, then frames written)."""
    state = {"fraction": 0.0}

    def report(event) -> None:
        if on_progress is None:
            return
        if event.stage == "faces":
            state["fraction"] = FACE_SHARE * event.fraction
        elif event.stage == "writing":
            state["fraction"] = FACE_SHARE + (1 - FACE_SHARE) * event.fraction
        on_progress(state["fraction"], event.stage)

    return report


# -- the only places that touch the pipeline ---------------------------------------------------------

def job_options(values: dict, video: str | os.PathLike | None = None) -> LipsyncOptions:
    """LipsyncOptions from CLI-style values (UserError naming a bad one). output_fps "original"
    becomes `video`'s frame rate (without `video`: left to the default, for checking only)."""
    values = {"show_progress": False, **values}
    input_fps = None
    if values.get("output_fps") == ORIGINAL_FPS and video is not None:
        from latentsync.video import probe_video

        input_fps = probe_video(video).fps
    return options_from_values(values, input_fps)


def load_pipeline(spec: PipelineSpec):
    """The inference pipeline of `spec`, loaded once (models on its device)."""
    from latentsync.pipelines.lipsync_pipeline import LipsyncPipeline

    device = None if spec.device == "auto" else spec.device
    return LipsyncPipeline.from_files(spec.files, device=device, dtype=spec.dtype, face_backend=spec.face_backend)


def run_dub(pipeline, video: str | os.PathLike, audio: str | os.PathLike, out: str | os.PathLike,
            options: dict, on_progress: ProgressFn | None = None, work_dir: str | None = None):
    """Dub `video` with `audio` into `out` (written under a temporary name, then renamed); returns
    the pipeline's LipsyncResult (its `warnings` say e.g. how many frames had no face).

    `on_progress(fraction, stage)` is called as the run advances; an exception raised by it stops
    the run (that is how jobs are cancelled) and leaves no output behind.
    """
    opts = job_options(options if work_dir is None else {**options, "temp_dir": work_dir}, video)
    out = Path(out)
    with atomic_output(out) as temp:
        result = pipeline(str(video), str(audio), temp, opts, progress=_fraction_reporter(on_progress))
    result.output_path = out
    return result
