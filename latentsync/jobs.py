"""One dubbing job, as the HTTP server, the Ray batch runner and the ComfyUI node run it.

Everything these front ends need from the pipeline goes through the three functions at the
bottom of this module (`job_options`, `load_pipeline`, `run_dub`), so a change of the pipeline's
API is absorbed here. Job options are plain dicts of `LipsyncOptions` values under their
command-line meanings (seed -1 = random, output_fps "original" = the input's rate), so they can
be stored as JSON and sent to other processes.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Callable

from latentsync.app import HOW_TO_GET, CheckpointPaths, resolve_checkpoints
from latentsync.checkpoints import CHECKPOINTS_DIR
from latentsync.errors import UserError
from latentsync.io import atomic_output
from latentsync.pipelines.options import ORIGINAL_FPS, LipsyncOptions, options_from_values

FACE_SHARE = 0.3  # share of the progress bar taken by the face pass; the rest follows the frames written

ProgressFn = Callable[[float, str], None]  # (fraction 0..1, stage)


def checkpoint_paths(checkpoints_dir: str | os.PathLike, unet_config_path: str | None = None,
                     **files: str | None) -> CheckpointPaths:
    """The model files in one checkpoints folder (the Gradio app's layout, the tiny set included),
    `files` (unet_ckpt, whisper, vae) replacing single ones when given, or a UserError listing the
    missing files and where to get them."""
    paths = resolve_checkpoints(checkpoints_dir, unet_config_path)
    paths = replace(paths, **{name: Path(path) for name, path in files.items() if path})
    missing = paths.missing()
    if missing:
        raise UserError(f"missing checkpoints in {checkpoints_dir}: " + "; ".join(missing) + f". {HOW_TO_GET}")
    return paths


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


def load_pipeline(unet_config, unet_ckpt, whisper=None, vae=None, device=None, dtype=None,
                  face_backend: str = "mediapipe", checkpoints_dir: str | os.PathLike = CHECKPOINTS_DIR):
    """The inference pipeline, loaded once: models on `device`; `checkpoints_dir` is where the
    default Whisper file (when `whisper` is None) and the optional face backends' models are."""
    from latentsync.pipelines.lipsync_pipeline import LipsyncPipeline

    extra = {} if vae is None else {"vae_path": str(vae)}
    return LipsyncPipeline.from_checkpoints(str(unet_config), str(unet_ckpt), whisper and str(whisper), device=device,
                                            dtype=dtype, face_backend=face_backend, checkpoints_dir=checkpoints_dir,
                                            **extra)


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
