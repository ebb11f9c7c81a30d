"""The UNet trainer's config: loading (with the default checkpoint paths) and every check a user can
fail before any weights are loaded: resolution and frame count, `trainable_modules`, the SyncNet of
the sync loss, and the files the run will read. Each failure is a one-line `UserError`.
"""

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from latentsync.checkpoints import default_path
from latentsync.constants import MODEL_FPS
from latentsync.data.unet_dataset import training_clips
from latentsync.errors import UserError
from latentsync.face.mask import resolve_mask
from latentsync.models.unet import UNet3DConditionModel
from latentsync.training.config import RunSettings, load_training_config
from latentsync.training.options import TrainOptions
from latentsync.training.syncnet_trainer import check_syncnet_input
from latentsync.training.unet_step import StepSettings

MAX_MOTION_FRAMES = 24  # temporal_position_encoding_max_len of every config
SUPPORTED_FEAT_LENGTH = [2, 2]
REQUIRED_KEYS = ("data.num_frames", "data.resolution")
DEFAULT_PATHS = {key: str(default_path(name)) for key, name in (  # files the official configs do not name
    ("ckpt.vae_path", "vae"),
    ("ckpt.whisper_path", "whisper"),
    ("ckpt.syncnet_ckpt_path", "stable_syncnet"),
    ("ckpt.videomae_path", "videomae"),
    ("ckpt.vgg_path", "vgg16"),
    ("ckpt.syncnet_v2_path", "syncnet_v2"),
)}


def load_config(config_path: str, options: TrainOptions) -> tuple[DictConfig, RunSettings]:
    """The UNet YAML with overrides applied and its RunSettings; missing checkpoint paths get their defaults."""
    config, settings = load_training_config(config_path, options.overrides, "data, ckpt, run, optimizer, model",
                                            REQUIRED_KEYS, options.train_output_dir, options.max_train_steps)
    for key, default in DEFAULT_PATHS.items():
        if OmegaConf.select(config, key, default=None) is None:
            OmegaConf.update(config, key, default)
    return config, settings


def check_config(config: DictConfig, config_path: str) -> list[str]:
    """Every check that needs no weights; returns the training clip paths. UserError on problems."""
    data, run = config.data, config.run
    num_frames, res = int(data.num_frames), int(data.resolution)
    model = OmegaConf.to_container(config.model, resolve=True)
    factor = 8 * 2 ** max(len(model.get("block_out_channels", [])) - 1, 0)
    if res % factor:
        raise UserError(f"{config_path}: data.resolution {res} must be a multiple of {factor} "
                        "(8 x 2^(UNet levels - 1))")
    if num_frames < 1 or (model.get("use_motion_module") and num_frames > MAX_MOTION_FRAMES):
        raise UserError(f"{config_path}: data.num_frames {num_frames} must be between 1 and {MAX_MOTION_FRAMES}")
    feat_length = list(data.get("audio_feat_length", SUPPORTED_FEAT_LENGTH))
    if feat_length != SUPPORTED_FEAT_LENGTH:
        raise UserError(f"{config_path}: data.audio_feat_length {feat_length} is not supported "
                        f"(only {SUPPORTED_FEAT_LENGTH})")
    if float(data.get("video_fps", MODEL_FPS)) != MODEL_FPS:
        raise UserError(f"{config_path}: data.video_fps must be {MODEL_FPS} "
                        f"(the audio chunks are built for {MODEL_FPS} fps)")
    if run.get("use_syncnet") and not run.get("pixel_space_supervise"):
        raise UserError(f"{config_path}: run.use_syncnet needs run.pixel_space_supervise: true "
                        "(the sync loss scores decoded pixels)")
    select_trainable(build_unet(model, config_path, device="meta"), list(run.get("trainable_modules") or []))
    settings = StepSettings.from_config(config)
    if settings.use_syncnet:
        check_syncnet_config(config, config_path)
    check_files(config, config_path, settings)
    return training_clips(data.get("train_fileslist"), data.get("train_data_dir"))


def build_unet(model_section: dict, config_path: str, device="cpu") -> UNet3DConditionModel:
    """The UNet of a config's `model:` section (on the meta device for checks)."""
    try:
        with torch.device(device):
            return UNet3DConditionModel.from_config(model_section)
    except (ValueError, TypeError, KeyError) as e:
        raise UserError(f"{config_path}: cannot build the UNet from the model section "
                        f"({str(e).splitlines()[0]})") from None


def select_trainable(unet: torch.nn.Module, patterns: list[str]) -> list[str]:
    """Set requires_grad by name: every parameter whose name contains one of `patterns`, or all
    parameters when the list is empty. Returns the trainable names; UserError for a pattern that
    matches nothing (a typo would otherwise silently freeze that part)."""
    names = [name for name, _ in unet.named_parameters()]
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern:
            raise UserError(f"run.trainable_modules: {pattern!r} is not a non-empty name fragment")
        if not any(pattern in name for name in names):
            roots = sorted({name.split(".")[0] for name in names})
            raise UserError(f"run.trainable_modules: {pattern!r} matches no UNet parameter (names contain e.g. "
                            f"'motion_modules.', 'attentions.', 'attn2.'; top-level modules: {', '.join(roots)})")
    trainable = []
    for name, param in unet.named_parameters():
        param.requires_grad_(not patterns or any(p in name for p in patterns))
        if param.requires_grad:
            trainable.append(name)
    return trainable


def syncnet_settings(config: DictConfig, config_path: str) -> tuple[DictConfig, int, bool]:
    """(SyncNet config, its input resolution, lower_half) from data.syncnet_config_path."""
    path = Path(str(config.data.get("syncnet_config_path") or ""))
    if not path.is_file():
        raise UserError(f"{config_path}: data.syncnet_config_path: {path}: SyncNet config not found")
    try:
        sn_config = OmegaConf.load(path)
    except Exception as e:  # YAML errors of several kinds
        raise UserError(f"{path}: not a readable SyncNet config ({str(e).splitlines()[0]})") from None
    res = OmegaConf.select(sn_config, "data.resolution", default=None)
    if res is None or "model" not in sn_config:
        raise UserError(f"{path}: SyncNet config needs data.resolution and a model section")
    return sn_config, int(res), bool(OmegaConf.select(sn_config, "data.lower_half", default=True))


def check_syncnet_config(config: DictConfig, config_path: str) -> None:
    """The SyncNet must take the generated frames: same number of frames, pixel space, and a UNet
    resolution that is the SyncNet's or an integer multiple of it (frames are downscaled, as the
    reference does 512 -> 256; upscaling or non-integer factors are refused); then its encoders
    must accept those shapes."""
    sn_config, sn_res, lower_half = syncnet_settings(config, config_path)
    sn_path = config.data.syncnet_config_path
    res, num_frames = int(config.data.resolution), int(config.data.num_frames)
    if OmegaConf.select(sn_config, "data.latent_space", default=False):
        raise UserError(f"{sn_path}: a latent-space SyncNet is not supported for the sync loss; use a pixel one")
    sn_frames = OmegaConf.select(sn_config, "data.num_frames", default=num_frames)
    if int(sn_frames) != num_frames:
        raise UserError(f"{config_path}: data.num_frames {num_frames} does not match the SyncNet config "
                        f"{sn_path} (data.num_frames {sn_frames})")
    if res < sn_res or res % sn_res:
        raise UserError(f"{config_path}: data.resolution {res} does not match the SyncNet config {sn_path} "
                        f"(data.resolution {sn_res}): the UNet resolution must equal it or be an integer "
                        f"multiple of it (generated frames are downscaled for the sync loss)")
    check_syncnet_input(sn_config.model, num_frames, sn_res, lower_half, sn_path)


def check_files(config: DictConfig, config_path: str, settings: StepSettings) -> None:
    """Every file the run will read exists (checkpoints, validation media)."""
    ckpt, data = config.ckpt, config.data
    allow_random = bool(config.run.get("allow_random_aux_weights", False))
    needed = [("ckpt.whisper_path", ckpt.whisper_path), ("ckpt.vae_path", ckpt.vae_path)]
    if settings.use_syncnet:
        needed.append(("ckpt.syncnet_ckpt_path", ckpt.syncnet_ckpt_path))
    if settings.weights["trepa"] > 0 and not allow_random:
        needed.append(("ckpt.videomae_path", ckpt.videomae_path))
    if settings.weights["lpips"] > 0 and not allow_random:
        needed.append(("ckpt.vgg_path", ckpt.vgg_path))
    if ckpt.get("resume_ckpt_path"):
        needed.append(("ckpt.resume_ckpt_path", ckpt.resume_ckpt_path))
    if data.get("val_video_path") or data.get("val_audio_path"):
        needed += [("data.val_video_path", data.get("val_video_path") or ""),
                   ("data.val_audio_path", data.get("val_audio_path") or "")]
    for key, value in needed:
        hub_id = key == "ckpt.vae_path" and not Path(str(value)).is_absolute() and str(value).count("/") == 1
        if not value or not (Path(str(value)).exists() or hub_id):  # a VAE may be a hub id when online
            raise UserError(f"{config_path}: {key}: {value or '(empty)'}: not found")
    resolve_mask(data.get("mask_image_path"), config_path)
