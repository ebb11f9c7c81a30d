"""The two ComfyUI nodes. They call the same pipeline as the command line (through
latentsync/jobs.py) and stream through it: the frames go to a temporary video chunk by chunk, the
pipeline dubs that file, and the result is read back chunk by chunk into the output tensor.

The dub node returns exactly ceil(audio samples * fps / sample rate) frames, the same height and
width as its input, and the audio it was given (the output is as long as the speech: the video is
cut, or looped forward and backward when the speech is longer). Pixels away from the face only
pass through the video codec (x264 at `CRF`), so they stay within a few levels of the input.
"""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path

from latentsync.checkpoints import CHECKPOINTS_DIR
from latentsync.constants import MODEL_FPS
from latentsync.face.detectors import DEFAULT_FACE_BACKEND, DETECTOR_NAMES
from latentsync.loading import DTYPE_CHOICES
from latentsync.pipelines.options import RANDOM_SEED, field_type, option_fields

logger = logging.getLogger(__name__)

PIPELINE = "LATENTSYNC_PIPELINE"
CATEGORY = "LatentSync"
REPO = Path(__file__).resolve().parents[1]  # ComfyUI runs in its own folder: the default is this checkout's
CHUNK = 16  # frames converted and written (or read back) at a time
CRF = 12  # x264 quality of the intermediate videos: near-transparent, still compact
AUTO = "auto"
# options the dub node does not expose: it sets the rate and size itself, and paths stay server-side
NODE_HIDDEN = ("temp_dir", "output_fps", "output_height", "face_box")
NO_FACE_INDEX = -1  # the widget's value for "the largest face" (the option's None)


def _option_widget(f) -> tuple:
    """A ComfyUI widget for LipsyncOptions field `f` (its default, bounds and help)."""
    meta, kind = f.metadata, field_type(f.name)
    if meta["choices"]:
        return (list(meta["choices"]), {"default": f.default, "tooltip": meta["help"]})
    spec = {"default": f.default, "tooltip": meta["help"]}
    if kind is bool:
        return ("BOOLEAN", spec)
    bounds = {"min": meta["min"], "max": meta["max"] if meta["max"] is not None else meta["ui_max"]}
    if f.name == "seed":
        bounds = {"min": RANDOM_SEED, "max": 2**31 - 1}
    if f.name == "face_index":
        bounds, spec["default"] = {"min": NO_FACE_INDEX, "max": 64}, NO_FACE_INDEX
        spec["tooltip"] += f" ({NO_FACE_INDEX}: the largest)"
    spec.update({k: v for k, v in bounds.items() if v is not None})
    if kind is float:
        spec["step"] = 0.05
    return ("INT" if kind is int else "FLOAT", spec)


def node_option_fields() -> list:
    return [f for f in option_fields() if f.metadata["cli"] and f.name not in NODE_HIDDEN]


class LatentSyncLoader:
    """Loads the models once; its output feeds any number of dub nodes."""

    CATEGORY = CATEGORY
    RETURN_TYPES = (PIPELINE,)
    RETURN_NAMES = ("pipeline",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        path = ("STRING", {"default": "", "tooltip": "empty: the file in checkpoints_dir"})
        return {"required": {"checkpoints_dir": ("STRING", {"default": str(REPO / CHECKPOINTS_DIR)}),
                             "device": ([AUTO, "cuda", "mps", "cpu"],),
                             "dtype": ([AUTO, *DTYPE_CHOICES],),
                             "face_backend": (list(DETECTOR_NAMES), {"default": DEFAULT_FACE_BACKEND})},
                "optional": {"unet_config_path": path, "unet_ckpt_path": path, "whisper_ckpt_path": path,
                             "vae_path": path}}

    def load(self, checkpoints_dir, device=AUTO, dtype=AUTO, face_backend=DEFAULT_FACE_BACKEND, unet_config_path="",
             unet_ckpt_path="", whisper_ckpt_path="", vae_path=""):
        from latentsync.jobs import PipelineSpec, load_pipeline
        from latentsync.loading import ModelFiles

        files = ModelFiles.in_folder(checkpoints_dir, unet_config=unet_config_path, unet_ckpt=unet_ckpt_path,
                                     whisper=whisper_ckpt_path, vae=vae_path)
        return (load_pipeline(PipelineSpec(files, device, None if dtype == AUTO else dtype, face_backend)),)


class LatentSyncDub:
    """Re-generates the mouth in `images` so the lips follow `audio`."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "AUDIO")
    RETURN_NAMES = ("images", "audio")
    FUNCTION = "dub"

    @classmethod
    def INPUT_TYPES(cls):
        required = {"pipeline": (PIPELINE,), "images": ("IMAGE",), "audio": ("AUDIO",),
                    "fps": ("FLOAT", {"default": float(MODEL_FPS), "min": 1.0, "max": 120.0, "step": 0.01,
                                      "tooltip": "frame rate of the input frames (and of the output)"})}
        required.update({f.name: _option_widget(f) for f in node_option_fields()})
        return {"required": required}

    def dub(self, pipeline, images, audio, fps, **options):
        if options.get("face_index") == NO_FACE_INDEX:
            options["face_index"] = None
        return dub_frames(pipeline, images, audio, float(fps), options)


def expected_frames(num_samples: int, sample_rate: int, fps: float) -> int:
    """Frames that cover the speech at `fps` (the output is exactly as long as the speech)."""
    return math.ceil(num_samples * fps / sample_rate)


def dub_frames(pipeline, images, audio: dict, fps: float, options: dict):
    """(frames [M, H, W, 3] float 0..1, audio) for IMAGE `images` [N, H, W, 3] and AUDIO `audio`."""
    import torch

    from latentsync.jobs import run_dub
    from latentsync.video import write_audio_wav

    if images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
        raise ValueError(f"expected IMAGE frames [N, H, W, 3], got {list(images.shape)}")
    waveform, rate = audio["waveform"], int(audio["sample_rate"])
    samples = waveform[0].detach().cpu().float().clamp(-1, 1).T.numpy()  # [T, C]
    if len(samples) == 0:
        raise ValueError("the AUDIO input is empty")
    height, width = int(images.shape[1]), int(images.shape[2])
    count = expected_frames(len(samples), rate, fps)
    with tempfile.TemporaryDirectory(prefix="latentsync-comfyui-") as tmp:
        tmp = Path(tmp)
        write_frames(images, tmp / "frames.mp4", fps)
        write_audio_wav(tmp / "speech.wav", samples, rate)
        run_dub(pipeline, tmp / "frames.mp4", tmp / "speech.wav", tmp / "dubbed.mp4",
                {**options, "output_fps": fps, "crf": CRF}, on_progress=_comfy_progress(), work_dir=str(tmp))
        frames = read_frames(tmp / "dubbed.mp4", count, height, width, torch)
    return frames, {"waveform": waveform, "sample_rate": rate}


def write_frames(images, path: Path, fps: float) -> None:
    """Encode IMAGE frames to `path`, CHUNK frames at a time (no uint8 copy of the whole clip)."""
    import torch

    from latentsync.video import VideoWriter

    with VideoWriter(path, fps, int(images.shape[2]), int(images.shape[1]), crf=CRF) as writer:
        for start in range(0, len(images), CHUNK):
            chunk = images[start:start + CHUNK].detach().cpu().float()
            writer.write(chunk.clamp(0, 1).mul(255).round().to(torch.uint8).numpy())


def read_frames(path: Path, count: int, height: int, width: int, torch):
    """The first `count` frames of `path` as IMAGE [count, H, W, 3] (the last repeated if it is short)."""
    from latentsync.video import iter_frames

    out = torch.empty((count, height, width, 3), dtype=torch.float32)
    filled = 0
    for chunk in iter_frames(path, fps=None, chunk_size=CHUNK):
        take = min(len(chunk), count - filled)
        out[filled:filled + take] = torch.from_numpy(chunk[:take, :height, :width]).float().div_(255)
        filled += take
        if filled == count:
            break
    if filled == 0:
        raise RuntimeError(f"{path}: the pipeline wrote no frames")
    if filled < count:
        logger.warning("the dubbed video has %d frames, %d needed: repeating the last one", filled, count)
        out[filled:] = out[filled - 1]
    return out


def _comfy_progress():
    """ComfyUI's progress bar and Cancel button, when running inside ComfyUI (else None)."""
    try:
        import comfy.model_management as management
        import comfy.utils
    except ImportError:
        return None
    bar, steps = comfy.utils.ProgressBar(1000), 1000

    def report(fraction: float, stage: str) -> None:
        management.throw_exception_if_processing_interrupted()
        bar.update_absolute(int(fraction * steps), steps)

    return report


NODE_CLASS_MAPPINGS = {"LatentSyncLoader": LatentSyncLoader, "LatentSyncDub": LatentSyncDub}
NODE_DISPLAY_NAME_MAPPINGS = {"LatentSyncLoader": "LatentSync Loader", "LatentSyncDub": "LatentSync Dub"}
