"""Everything inference reads from disk, in one place: which model files a pipeline is built
from (`ModelFiles`), the command-line flags that choose them (`ModelSettings`), the UNet's YAML
config, the Whisper file that fits the UNet, the VAE, the mask image (latentsync.face.mask
resolves it), and the assembled pipeline parts.

Two layers: `ModelFiles.check()` only looks at the file system and the YAML (no torch import, so
a user who mistyped a path hears about it at once, with where to get a missing file), then
`load_components` builds the models from checked files. `LipsyncPipeline.from_files` is the one
way to build a pipeline from files; the CLI, the app, the server, Ray batches, ComfyUI, training
validation and the benchmarks all go through it.

Where the files are (docs/checkpoints.md, "Where the checkpoints folder is"): every default is a
path under one checkpoints folder, `checkpoints` relative to the working directory unless
`--checkpoints_dir` names another; a file path given explicitly is used as given.
"""

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

from latentsync.checkpoints import CHECKPOINTS_DIR, checkpoint_file, default_path
from latentsync.cli_args import setting
from latentsync.errors import UserError
from latentsync.io import read_yaml
from latentsync.face.detectors import DEFAULT_FACE_BACKEND, DETECTOR_NAMES
from latentsync.face.mask import resolve_mask
from latentsync.paths import config_path

logger = logging.getLogger(__name__)

DEFAULT_UNET_CONFIG = config_path("unet/stage2_512.yaml")  # the checkout's configs/, or the packaged copy
DEFAULT_UNET_CKPT = default_path("unet")
DEFAULT_VAE = default_path("vae")
# the UNet's cross_attention_dim is the width of the Whisper features it was trained on
WHISPER_BY_WIDTH = {384: "whisper/tiny.pt", 768: "whisper/small.pt"}
DEFAULT_RESOLUTION = 256
DTYPE_CHOICES = ("fp32", "fp16", "bf16")  # what --dtype takes (latentsync.device maps them to torch dtypes)
VAE_HUB_HINT = "download stabilityai/sd-vae-ft-mse into checkpoints/sd-vae-ft-mse"
VAE_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
UNET_CONFIG_SOURCE = "part of this repository (configs/unet/); pass --unet_config_path to pick another"
HOW_TO_GET = ("Run `python -m scripts.download_checkpoints` when online, or copy the files by hand "
              "(see checkpoints/README.md).")
SMOKE_TEST = ("To smoke-test without them: `python -m scripts.make_tiny_checkpoints --output_dir "
              "/tmp/latentsync-tiny` writes a tiny random set and prints the flags that use it.")


def source_of(name: str) -> str:
    """Where to get the checkpoint-table file `name`, with the files a folder needs."""
    entry = checkpoint_file(name)
    return entry.source() + (f" ({' + '.join(entry.files)})" if entry.files else "")


def _missing_line(name: str, path: Path, what: str) -> str:
    """"<path>: <what> not found (<purpose>: get <file> from <source>)" for table file `name`."""
    entry = checkpoint_file(name)
    note = "" if path.name == Path(entry.path.rstrip("/")).name else f"; the released file is {entry.path}"
    return f"{path}: {what} not found ({entry.purpose}: get {entry.path} from {source_of(name)}{note})"


def _given(path) -> Path | None:
    """An explicitly given path (None and "" mean: not given)."""
    return Path(path) if path not in (None, "") else None


@dataclass(frozen=True)
class ModelFiles:
    """Which files one pipeline is built from (hashable: a worker keeps one pipeline per value).

    Paths are taken as given; `whisper` None means the file that fits the UNet's width, under
    `checkpoints_dir`, which is also where the optional face backends' models are found.
    """

    unet_config: Path = DEFAULT_UNET_CONFIG
    unet_ckpt: Path = DEFAULT_UNET_CKPT
    whisper: Path | None = None
    vae: str = str(DEFAULT_VAE)  # a local diffusers folder or a hub id
    checkpoints_dir: Path = Path(CHECKPOINTS_DIR)

    def __post_init__(self) -> None:  # str or PathLike in, one normal form out (so equal files hash equal)
        for name in ("unet_config", "unet_ckpt", "checkpoints_dir"):
            object.__setattr__(self, name, Path(getattr(self, name)))
        object.__setattr__(self, "whisper", _given(self.whisper))
        object.__setattr__(self, "vae", str(self.vae))

    @classmethod
    def in_folder(cls, checkpoints_dir: str | os.PathLike | None = None, *, unet_config=None, unet_ckpt=None,
                  whisper=None, vae=None) -> "ModelFiles":
        """The official layout under `checkpoints_dir` (default: `checkpoints`); a path given for one
        file replaces its default ("" counts as not given)."""
        folder = _given(checkpoints_dir) or Path(CHECKPOINTS_DIR)
        return cls(unet_config=_given(unet_config) or DEFAULT_UNET_CONFIG,
                   unet_ckpt=_given(unet_ckpt) or default_path("unet", folder), whisper=_given(whisper),
                   vae=str(_given(vae) or default_path("vae", folder)), checkpoints_dir=folder)

    def whisper_path(self, config: dict | None = None) -> Path:
        """The Whisper file: as given, else the one that fits the UNet's cross_attention_dim."""
        if self.whisper is not None:
            return self.whisper
        return whisper_for(read_yaml(self.unet_config) if config is None else config, self.unet_config,
                           self.checkpoints_dir)

    def missing(self) -> list[str]:
        """One line per missing file: its path and where to get it (empty when complete)."""
        lines = []
        if not self.unet_config.is_file():
            lines.append(f"{self.unet_config}: config file not found (the UNet config is {UNET_CONFIG_SOURCE})")
        if not self.unet_ckpt.is_file():
            lines.append(_missing_line("unet", self.unet_ckpt, "checkpoint file"))
        try:
            whisper = self.whisper_path()
        except UserError:  # no readable config or an unknown width: check() says which
            whisper = default_path("whisper", self.checkpoints_dir)
        if not whisper.is_file():
            lines.append(_missing_line("whisper", whisper, "Whisper checkpoint"))
        vae = Path(self.vae)
        if not is_hub_id(self.vae) and not ((vae / "config.json").is_file()
                                            and any((vae / w).is_file() for w in VAE_WEIGHTS)):
            lines.append(_missing_line("vae", vae, "VAE folder"))
        return lines

    def check(self) -> "ModelFiles":
        """These files with the Whisper path filled in, or a UserError naming the first problem: a
        bad config, or a missing file with where to get it and how to smoke-test without it."""
        config = read_yaml(self.unet_config) if self.unet_config.is_file() else None
        whisper = None
        if config is not None:
            config_resolution(config, self.unet_config)
            whisper = self.whisper_path(config)
            resolve_mask(config.get("data", {}).get("mask_image_path"), str(self.unet_config))
        missing = self.missing()
        if missing:
            more = f"; {len(missing) - 1} more file(s) missing" if len(missing) > 1 else ""
            raise UserError(f"{missing[0]}{more}. {HOW_TO_GET} {SMOKE_TEST}")
        return replace(self, whisper=whisper)


@dataclass(kw_only=True)
class ModelSettings:
    """The flags that choose the model files and the hardware, shared by every entry point that
    builds a pipeline (inference CLI, Gradio app, HTTP server)."""

    checkpoints_dir: str = setting(CHECKPOINTS_DIR, "folder of the model files (official names: "
                                   "latentsync_unet.pt, whisper/tiny.pt, sd-vae-ft-mse/, auxiliary/...); "
                                   "relative to the working directory")
    unet_config_path: str = setting(str(DEFAULT_UNET_CONFIG), "UNet config (configs/unet/)")
    inference_ckpt_path: str | None = setting(None, "UNet weights (default: CHECKPOINTS_DIR/latentsync_unet.pt)")
    whisper_ckpt_path: str | None = setting(
        None, "default: picked by the UNet config's cross_attention_dim: "
        + ", ".join(f"{w} -> CHECKPOINTS_DIR/{p}" for w, p in WHISPER_BY_WIDTH.items()))
    vae_path: str | None = setting(None, "diffusers VAE folder or hub id (default: CHECKPOINTS_DIR/sd-vae-ft-mse)")
    device: str | None = setting(None, "cuda, cuda:1, mps or cpu (default: best available)")
    dtype: str | None = setting(None, "default: fp16 on CUDA, else fp32", choices=DTYPE_CHOICES)
    face_backend: str = setting(DEFAULT_FACE_BACKEND, "face detector", choices=DETECTOR_NAMES)

    def model_files(self) -> ModelFiles:
        return ModelFiles.in_folder(self.checkpoints_dir, unet_config=self.unet_config_path,
                                    unet_ckpt=self.inference_ckpt_path, whisper=self.whisper_ckpt_path,
                                    vae=self.vae_path)


def whisper_for(config: dict, config_path, checkpoints_dir=CHECKPOINTS_DIR) -> Path:
    """The Whisper checkpoint whose feature width matches the UNet's cross_attention_dim."""
    width = config.get("model", {}).get("cross_attention_dim")
    if width not in WHISPER_BY_WIDTH:
        known = ", ".join(f"{w} -> {name}" for w, name in WHISPER_BY_WIDTH.items())
        raise UserError(f"{config_path}: model.cross_attention_dim {width} has no default Whisper checkpoint "
                        f"({known}); pass whisper_ckpt_path")
    return Path(checkpoints_dir) / WHISPER_BY_WIDTH[width]


def config_resolution(config: dict, config_path) -> int:
    """The UNet config's data.resolution (a UserError unless divisible by 8)."""
    resolution = int(config.get("data", {}).get("resolution", DEFAULT_RESOLUTION))
    if resolution % 8:
        raise UserError(f"{config_path}: data.resolution {resolution} is not divisible by 8")
    return resolution


def is_hub_id(vae_path) -> bool:
    """True for `owner/name` that is not a local path (its first part is not a folder here)."""
    text = str(vae_path)
    parts = text.split("/")
    return (len(parts) == 2 and all(parts) and not Path(text).is_absolute() and not Path(text).exists()
            and not Path(parts[0]).exists() and not text.startswith("."))


def check_vae(vae_path) -> str:
    """The VAE location unchanged; a local path must be a diffusers folder with config.json."""
    if is_hub_id(vae_path):
        return str(vae_path)
    folder = Path(vae_path)
    if not (folder / "config.json").is_file():
        raise UserError(f"{vae_path}: VAE folder not found (expected a diffusers AutoencoderKL folder with "
                        f"config.json, or a hub id such as stabilityai/sd-vae-ft-mse)")
    return str(vae_path)


def resolve_files(unet_config_path=DEFAULT_UNET_CONFIG, inference_ckpt_path=None, whisper_ckpt_path=None,
                  vae_path=None, checkpoints_dir=None) -> ModelFiles:
    """Checked `ModelFiles` from paths given one by one (None: the default under `checkpoints_dir`);
    no model is loaded. Without `whisper_ckpt_path` the Whisper file is picked from the UNet's
    cross_attention_dim: 384 -> CHECKPOINTS/whisper/tiny.pt, 768 -> CHECKPOINTS/whisper/small.pt."""
    return ModelFiles.in_folder(checkpoints_dir, unet_config=unet_config_path, unet_ckpt=inference_ckpt_path,
                                whisper=whisper_ckpt_path, vae=vae_path).check()


def check_job_paths(video_path, audio_path, output_path) -> None:
    """The inputs of one job exist and its output would not overwrite either of them."""
    inputs = ((video_path, "input video"), (audio_path, "input audio"))
    for path, what in inputs:
        if not Path(path).is_file():
            raise UserError(f"{path}: {what} not found")
    for path, what in inputs:
        if Path(output_path).resolve() == Path(path).resolve():
            raise UserError(f"{output_path}: the output path is the {what}; choose another output path")


def load_vae(vae_path, device, dtype):
    """AutoencoderKL from a local diffusers folder, or a hub id (e.g. stabilityai/sd-vae-ft-mse) when online."""
    import torch
    from diffusers import AutoencoderKL

    check_vae(vae_path)
    try:
        vae = AutoencoderKL.from_pretrained(str(vae_path))
    except (OSError, ValueError) as exc:
        raise UserError(f"{vae_path}: cannot load the VAE ({str(exc).splitlines()[0]}); {VAE_HUB_HINT}") from None
    return torch.nn.Module.to(vae.eval(), device=device, dtype=dtype)


WEIGHT_PARTS = ("unet", "audio_encoder", "vae")  # the pipeline parts that are loaded from weight files


def load_components(files: ModelFiles, device=None, dtype=None, face_backend: str | None = None, **loaded) -> dict:
    """The keyword arguments of LipsyncPipeline(...) built from `files` (checked first); the face
    detector is `face_backend` (None: DEFAULT_FACE_BACKEND) with its models from files.checkpoints_dir.

    `loaded`: parts already in memory (unet, audio_encoder, vae; e.g. the in-training UNet of a
    validation run) used instead of loading them; when all three are given only the UNet config
    (scheduler, resolution, mask) is read from `files`.
    """
    import torch

    from latentsync.audio import AudioEncoder
    from latentsync.device import pick_device, pick_dtype
    from latentsync.face.detectors import make_face_detector
    from latentsync.models.checkpoint import load_unet
    from latentsync.schedulers import make_scheduler, unet_prediction_type

    unknown = sorted(set(loaded) - set(WEIGHT_PARTS))
    if unknown:
        raise TypeError(f"load_components: {unknown[0]!r} is not one of {', '.join(WEIGHT_PARTS)}")
    if set(loaded) != set(WEIGHT_PARTS):
        files = files.check()
    config = read_yaml(files.unet_config)
    device = pick_device(device)
    dtype = dtype if isinstance(dtype, torch.dtype) else pick_dtype(dtype, device)
    build = dict(unet=lambda: load_unet(config, files.unet_ckpt, device=device, dtype=dtype),
                 audio_encoder=lambda: AudioEncoder(files.whisper, device=device),
                 vae=lambda: load_vae(files.vae, device, dtype))
    return dict({name: loaded[name] if name in loaded else make() for name, make in build.items()},
                scheduler=make_scheduler(prediction_type=unet_prediction_type(config, str(files.unet_config))),
                face_detector=make_face_detector(face_backend or DEFAULT_FACE_BACKEND, files.checkpoints_dir, device),
                resolution=config_resolution(config, files.unet_config),
                mask_path=resolve_mask(config.get("data", {}).get("mask_image_path"), str(files.unet_config)))
