"""The UNet trainer's config: its sections (`UNetConfig`: the keys of `configs/unet/*.yaml` and the
official configs, defaults for the checkpoint paths those do not name; an unknown key is an error)
and every check a user can fail before any weights are loaded: resolution and frame count (at most
the motion modules' positions, the UNet's `max_frames` that inference reads too), `trainable_modules`,
the SyncNet of the sync loss, and the files the run will read. Each failure is a one-line `UserError`.
"""

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Optional

import torch
from omegaconf import MISSING, OmegaConf

from latentsync.audio import AUDIO_FEAT_LENGTH
from latentsync.checkpoints import default_path
from latentsync.constants import MODEL_FPS, SAMPLE_RATE
from latentsync.data.syncnet_dataset import videos_from_config
from latentsync.errors import UserError
from latentsync.face.detectors import DEFAULT_FACE_BACKEND
from latentsync.face.mask import resolve_mask
from latentsync.losses.videomae import VisionTransformer3D
from latentsync.models.unet import DEFAULT_MOTION_KWARGS, UNet3DConditionModel
from latentsync.schedulers import DEFAULT_PREDICTION_TYPE
from latentsync.training.config import (CkptSection, DataSection, OptimizerSection, RunSection, TrainingConfig,
                                        load_training_config, read_config, signature_keys)
from latentsync.training.options import TrainOptions
from latentsync.training.syncnet_config import SyncNetConfig, check_syncnet_input
from latentsync.training.unet_step import StepSettings

# keys of the official 1.0 configs' model section that the UNet does not take (diffusers ignores them)
IGNORED_MODEL_KEYS = ("custom_audio_layer", "audio_condition_method", "unet_use_cross_frame_attention",
                      "unet_use_temporal_attention")


def default_file(name: str):
    """A dataclass default: the checkpoint table's path of `name` (for files the official configs do not name)."""
    return field(default_factory=lambda: str(default_path(name)))


@dataclass
class UNetData(DataSection):
    num_frames: int = MISSING
    resolution: int = MISSING
    syncnet_config_path: Optional[str] = ""  # the SyncNet of the sync loss (run.use_syncnet)
    audio_embeds_cache_dir: Optional[str] = ""  # default: <run>/audio_embeds
    audio_mel_cache_dir: Optional[str] = ""
    val_video_path: Optional[str] = ""  # validation video (with val_audio_path) every run.validation_steps
    val_audio_path: Optional[str] = ""
    mask_image_path: Optional[str] = ""  # default: the packaged mask.png
    audio_sample_rate: int = SAMPLE_RATE
    video_fps: float = MODEL_FPS
    audio_feat_length: List[int] = field(default_factory=lambda: list(AUDIO_FEAT_LENGTH))  # the only one the chunking supports
    cache_frames: bool = False  # keep decoded clips in memory (tiny data sets only)
    cache_latents: bool = False  # keep every frame's VAE posterior in memory (small data sets)
    mask: Optional[str] = None  # ignored: the 1.0 configs' "fix_mask" (mask_image_path is read)


@dataclass
class UNetCkpt(CkptSection):
    resume_ckpt_path: Optional[str] = ""  # initial UNet weights (stage 2: a stage-1 checkpoint)
    vae_path: str = default_file("vae")
    whisper_path: str = default_file("whisper")
    syncnet_ckpt_path: str = default_file("stable_syncnet")  # frozen SyncNet of the sync loss
    videomae_path: Optional[str] = default_file("videomae")  # TREPA extractor
    videomae_model: Dict[str, Any] = field(default_factory=dict)  # empty = ViT-g/14; VisionTransformer3D sizes
    vgg_path: Optional[str] = default_file("vgg16")  # LPIPS backbone
    syncnet_v2_path: Optional[str] = default_file("syncnet_v2")  # validation sync confidence (skipped if absent)


@dataclass
class UNetRun(RunSection):
    pixel_space_supervise: bool = False  # decode the one-step estimate for the pixel losses
    use_syncnet: bool = False
    recon_loss_weight: float = 0.0
    sync_loss_weight: float = 0.0
    perceptual_loss_weight: float = 0.0
    trepa_loss_weight: float = 0.0
    mask_loss_weight: float = 0.0  # extra weight of the generated region in the noise loss
    prediction_type: Optional[str] = DEFAULT_PREDICTION_TYPE  # what the UNet outputs (epsilon, sample, v_prediction)
    use_mixed_noise: bool = True
    mixed_noise_alpha: float = 1.0
    trainable_modules: List[str] = field(default_factory=list)  # name fragments; empty = every parameter
    max_train_epochs: int = -1  # > 0: stop after this many epochs if that comes before max_train_steps
    allow_random_aux_weights: bool = False  # missing VGG / VideoMAE files mean random weights (smoke runs only)
    inference_steps: int = 20  # validation video
    guidance_scale: float = 1.5  # validation video
    face_backend: str = DEFAULT_FACE_BACKEND  # validation video's face detector
    enable_xformers_memory_efficient_attention: bool = False  # ignored (the 1.0 configs carry it)


@dataclass
class UNetOptimizer(OptimizerSection):
    scale_lr: bool = False  # lr x samples per step (batch size x processes)


@dataclass
class UNetConfig(TrainingConfig):
    data: UNetData = field(default_factory=UNetData)
    ckpt: UNetCkpt = field(default_factory=UNetCkpt)
    run: UNetRun = field(default_factory=UNetRun)
    optimizer: UNetOptimizer = field(default_factory=UNetOptimizer)

    KEY_SPECS: ClassVar = {
        "model": {**signature_keys(UNet3DConditionModel), **dict.fromkeys(IGNORED_MODEL_KEYS),
                  "motion_module_kwargs": dict.fromkeys(DEFAULT_MOTION_KWARGS)},
        "ckpt.videomae_model": signature_keys(VisionTransformer3D)}

    def check(self, path) -> None:
        """The checks that need neither weights nor other files (see also `check_config`)."""
        super().check(path)
        data, run = self.data, self.run
        if list(data.audio_feat_length) != list(AUDIO_FEAT_LENGTH):
            raise UserError(f"{path}: data.audio_feat_length {list(data.audio_feat_length)} is not supported "
                            f"(only {list(AUDIO_FEAT_LENGTH)})")
        if float(data.video_fps) != MODEL_FPS:
            raise UserError(f"{path}: data.video_fps must be {MODEL_FPS} "
                            f"(the audio chunks are built for {MODEL_FPS} fps)")
        if run.use_syncnet and not run.pixel_space_supervise:
            raise UserError(f"{path}: run.use_syncnet needs run.pixel_space_supervise: true "
                            "(the sync loss scores decoded pixels)")


def load_config(config_path: str, options: TrainOptions) -> UNetConfig:
    """The UNet YAML with overrides applied, checked (the checks needing no files or weights)."""
    return load_training_config(UNetConfig, config_path, options.overrides, options.train_output_dir,
                                options.max_train_steps)


def check_config(config: UNetConfig, config_path: str) -> list[str]:
    """Every check that needs no weights; returns the training clip paths. UserError on problems."""
    data, run = config.data, config.run
    num_frames, res = data.num_frames, data.resolution
    factor = 8 * 2 ** max(len(config.model.get("block_out_channels", [])) - 1, 0)
    if res % factor:
        raise UserError(f"{config_path}: data.resolution {res} must be a multiple of {factor} "
                        "(8 x 2^(UNet levels - 1))")
    unet = build_unet(config.model, config_path, device="meta")
    max_frames = unet.max_frames  # the motion modules' position count, as inference reads it
    if num_frames < 1 or (max_frames is not None and num_frames > max_frames):
        limit = f"between 1 and {max_frames} (the motion modules' positions)" if max_frames else "at least 1"
        raise UserError(f"{config_path}: data.num_frames {num_frames} must be {limit}")
    select_trainable(unet, list(run.trainable_modules))
    settings = StepSettings.from_config(run)
    if settings.use_syncnet:
        check_syncnet_config(config, config_path)
    check_files(config, config_path, settings)
    return videos_from_config(data.train_fileslist, data.train_data_dir, required=True)


def build_unet(model_section: dict, config_path: str, device="cpu") -> UNet3DConditionModel:
    """The UNet of a config's `model:` section (on the meta device for checks)."""
    try:
        with torch.device(device):
            return UNet3DConditionModel.from_config(copy.deepcopy(model_section))  # the config stays as read
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


def syncnet_settings(config: UNetConfig, config_path: str) -> tuple[dict, int, bool]:
    """(SyncNet model section, its input resolution, lower_half) of data.syncnet_config_path, read
    with the SyncNet trainer's sections (an unknown key there is named like one here)."""
    path = Path(config.data.syncnet_config_path or "")
    if not path.is_file():
        raise UserError(f"{config_path}: data.syncnet_config_path: {path}: SyncNet config not found")
    sn_config = read_config(SyncNetConfig, path)
    if OmegaConf.is_missing(sn_config, "model") or OmegaConf.is_missing(sn_config.data, "resolution"):
        raise UserError(f"{path}: SyncNet config needs data.resolution and a model section")
    if sn_config.data.latent_space:
        raise UserError(f"{path}: a latent-space SyncNet is not supported for the sync loss; use a pixel one")
    sn_frames = OmegaConf.select(sn_config, "data.num_frames", default=config.data.num_frames)
    if int(sn_frames) != config.data.num_frames:
        raise UserError(f"{config_path}: data.num_frames {config.data.num_frames} does not match the SyncNet config "
                        f"{path} (data.num_frames {sn_frames})")
    lower_half = OmegaConf.select(sn_config, "data.lower_half", default=True)
    return OmegaConf.to_container(sn_config.model, resolve=True), int(sn_config.data.resolution), bool(lower_half)


def check_syncnet_config(config: UNetConfig, config_path: str) -> None:
    """The SyncNet must take the generated frames: same number of frames, pixel space, and a UNet
    resolution that is the SyncNet's or an integer multiple of it (frames are downscaled, as the
    reference does 512 -> 256; upscaling or non-integer factors are refused); then its encoders
    must accept those shapes."""
    sn_model, sn_res, lower_half = syncnet_settings(config, config_path)
    sn_path = config.data.syncnet_config_path
    res, num_frames = config.data.resolution, config.data.num_frames
    if res < sn_res or res % sn_res:
        raise UserError(f"{config_path}: data.resolution {res} does not match the SyncNet config {sn_path} "
                        f"(data.resolution {sn_res}): the UNet resolution must equal it or be an integer "
                        f"multiple of it (generated frames are downscaled for the sync loss)")
    check_syncnet_input(sn_model, num_frames, sn_res, lower_half, sn_path)


def check_files(config: UNetConfig, config_path: str, settings: StepSettings) -> None:
    """Every file the run will read exists (checkpoints, validation media)."""
    ckpt, data = config.ckpt, config.data
    allow_random = config.run.allow_random_aux_weights
    needed = [("ckpt.whisper_path", ckpt.whisper_path), ("ckpt.vae_path", ckpt.vae_path)]
    if settings.use_syncnet:
        needed.append(("ckpt.syncnet_ckpt_path", ckpt.syncnet_ckpt_path))
    if settings.weights["trepa"] > 0 and not allow_random:
        needed.append(("ckpt.videomae_path", ckpt.videomae_path))
    if settings.weights["lpips"] > 0 and not allow_random:
        needed.append(("ckpt.vgg_path", ckpt.vgg_path))
    if ckpt.resume_ckpt_path:
        needed.append(("ckpt.resume_ckpt_path", ckpt.resume_ckpt_path))
    if data.val_video_path or data.val_audio_path:
        needed += [("data.val_video_path", data.val_video_path or ""), ("data.val_audio_path", data.val_audio_path or "")]
    for key, value in needed:
        hub_id = key == "ckpt.vae_path" and not Path(str(value)).is_absolute() and str(value).count("/") == 1
        if not value or not (Path(str(value)).exists() or hub_id):  # a VAE may be a hub id when online
            raise UserError(f"{config_path}: {key}: {value or '(empty)'}: not found")
    resolve_mask(data.mask_image_path, config_path)
