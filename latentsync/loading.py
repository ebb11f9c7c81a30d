"""Everything inference reads from disk, in one place: checkpoint paths, the UNet's YAML config,
the Whisper file that fits the UNet, the VAE, the mask image (latentsync.face.mask resolves it),
and the assembled pipeline parts.

Two layers: `resolve_files` only looks at the file system and the YAML (no torch import, so a user
who mistyped a path hears about it at once), then `load_components` builds the models from the
resolved files. `LipsyncPipeline.from_checkpoints`, the CLI and the app all go through both.
"""

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from latentsync import checkpoints
from latentsync.errors import UserError
from latentsync.face.mask import resolve_mask
from latentsync.paths import config_path

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
CHECKPOINTS_DIR = REPO / checkpoints.CHECKPOINTS_DIR  # the CLI's defaults live in the checkout
DEFAULT_UNET_CONFIG = config_path("unet/stage2_512.yaml")  # the checkout's configs/, or the packaged copy
DEFAULT_UNET_CKPT = checkpoints.default_path("unet", CHECKPOINTS_DIR)
DEFAULT_VAE = checkpoints.default_path("vae", CHECKPOINTS_DIR)
# the UNet's cross_attention_dim is the width of the Whisper features it was trained on
WHISPER_BY_WIDTH = {384: "whisper/tiny.pt", 768: "whisper/small.pt"}
DEFAULT_RESOLUTION = 256
VAE_HUB_HINT = "download stabilityai/sd-vae-ft-mse into checkpoints/sd-vae-ft-mse"


@dataclass
class CheckpointFiles:
    """Checked paths of one model set plus the parsed UNet config."""

    unet_config: Path
    unet_ckpt: Path
    whisper: Path
    vae: str  # a local diffusers folder or a hub id
    config: dict
    resolution: int
    mask: Path


def read_yaml(path) -> dict:
    """A YAML config as a plain dict, or a UserError naming the file."""
    from omegaconf import OmegaConf

    if not Path(path).is_file():
        raise UserError(f"{path}: config file not found")
    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as exc:  # OmegaConf/YAML parse errors of several kinds
        raise UserError(f"{path}: not a readable YAML config ({str(exc).splitlines()[0]})") from None


def whisper_for(config: dict, config_path, checkpoints_dir=CHECKPOINTS_DIR) -> Path:
    """The Whisper checkpoint whose feature width matches the UNet's cross_attention_dim."""
    width = config.get("model", {}).get("cross_attention_dim")
    if width not in WHISPER_BY_WIDTH:
        known = ", ".join(f"{w} -> {name}" for w, name in WHISPER_BY_WIDTH.items())
        raise UserError(f"{config_path}: model.cross_attention_dim {width} has no default Whisper checkpoint "
                        f"({known}); pass whisper_ckpt_path")
    return Path(checkpoints_dir) / WHISPER_BY_WIDTH[width]


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


def resolve_files(unet_config_path=DEFAULT_UNET_CONFIG, inference_ckpt_path=DEFAULT_UNET_CKPT,
                  whisper_ckpt_path=None, vae_path=DEFAULT_VAE,
                  checkpoints_dir=CHECKPOINTS_DIR) -> CheckpointFiles:
    """Check that every file exists (UserError naming the first missing one); no model is loaded.

    Without `whisper_ckpt_path` the Whisper file is picked from the UNet's cross_attention_dim:
    384 -> CHECKPOINTS/whisper/tiny.pt, 768 -> CHECKPOINTS/whisper/small.pt.
    """
    config = read_yaml(unet_config_path)
    resolution = int(config.get("data", {}).get("resolution", DEFAULT_RESOLUTION))
    if resolution % 8:
        raise UserError(f"{unet_config_path}: data.resolution {resolution} is not divisible by 8")
    if not Path(inference_ckpt_path).is_file():
        raise UserError(f"{inference_ckpt_path}: checkpoint file not found")
    whisper = Path(whisper_ckpt_path) if whisper_ckpt_path else whisper_for(config, unet_config_path,
                                                                             checkpoints_dir)
    if not whisper.is_file():
        raise UserError(f"{whisper}: Whisper checkpoint not found")
    mask = resolve_mask(config.get("data", {}).get("mask_image_path"), str(unet_config_path))
    return CheckpointFiles(Path(unet_config_path), Path(inference_ckpt_path), whisper, check_vae(vae_path), config,
                           resolution, mask)


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


def load_components(files: CheckpointFiles, device=None, dtype=None, face_backend: str = "mediapipe",
                    checkpoints_dir: str | os.PathLike = CHECKPOINTS_DIR) -> dict:
    """The keyword arguments of LipsyncPipeline(...) built from checked files."""
    import torch

    from latentsync.audio import AudioEncoder
    from latentsync.device import pick_device, pick_dtype
    from latentsync.face.detectors import make_face_detector
    from latentsync.models.checkpoint import load_unet
    from latentsync.schedulers import make_scheduler, unet_prediction_type

    device = pick_device(device)
    dtype = dtype if isinstance(dtype, torch.dtype) else pick_dtype(dtype, device)
    return dict(unet=load_unet(files.config, files.unet_ckpt, device=device, dtype=dtype),
                audio_encoder=AudioEncoder(files.whisper, device=device),
                vae=load_vae(files.vae, device, dtype),
                scheduler=make_scheduler(prediction_type=unet_prediction_type(files.config, str(files.unet_config))),
                face_detector=make_face_detector(face_backend, checkpoints_dir, device),
                resolution=files.resolution, mask_path=files.mask)
