"""Training the LatentSync UNet, stage 1 and stage 2 (SPEC 7).

    python -m scripts.train_unet --unet_config_path configs/unet/stage2.yaml

Reading order: `train` is the whole loop; `training_step` is one optimisation step of SPEC 7.3
(VAE latents -> mixed noise -> UNet -> noise-prediction loss -> one-step x0 estimate decoded to
pixels -> LPIPS, SyncNet and TREPA losses); everything else is a small helper.

A run folder `<data.train_output_dir>/<run_name>/` holds
    config.yaml, syncnet_config.yaml      the configs as used (overrides applied)
    checkpoints/checkpoint-<step>.pt      official layout {"state_dict", "global_step"}: inference
                                          and `load_unet` load it strictly
    checkpoints/training-state-<step>.pt  optimiser, LR schedule, grad scaler, RNGs, loss history;
                                          with the checkpoint of the same step `--resume_from`
                                          continues exactly where the run stopped
    val_videos/val_video_<step>.mp4       the inference pipeline on data.val_video_path/val_audio_path
    sync_conf_results/                    SyncNet-v2 confidence of the validation videos (if its
                                          checkpoint ckpt.syncnet_v2_path exists)
    loss_charts/loss_chart-<step>.png     loss curves; tensorboard/ has the same scalars

Every check a user can fail (unknown `trainable_modules` entry, missing data list or checkpoint,
SyncNet config that cannot take the generated frames, ...) runs before any model is loaded and
raises a one-line `UserError`.

Differences from the reference (SPEC 7, 12.1): any device (CPU included; fp16 autocast and the
grad scaler only on CUDA); the random draws of step k (VAE posterior samples, noise, timesteps)
come from a generator keyed by (seed, rank, k) and samples are keyed by their index, so resuming
reproduces the uninterrupted run; the optimiser state is saved; Whisper features are computed
before training (see latentsync/data/unet_dataset.py); a non-empty `trainable_modules` list is
honoured even without motion modules (the reference ignores it then; its stage-1 configs have an
empty list, which means "all parameters"); initial weights load strictly except for the motion
modules a stage-1 checkpoint lacks and the reference's SD-1.5 dropping rules (SPEC 4.9).
"""

import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from latentsync.errors import UserError
from latentsync.training import state as state_lib
from latentsync.training.state import (IndexBatches, atomic_save, find_state_file, new_run_dir, prune,
                                       load_run_config, read_training_state, rng_state, run_dir_of, save_curves, set_rng_state,
                                       step_generator)

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
CHECKPOINT_NAME = "checkpoint-{step}.pt"
STATE_NAME = "training-state-{step}.pt"
STATE_PATTERN = r"training-state-(\d+)\.pt$"
STATE_FORMAT = "latentsync-unet-training-state"
STATE_VERSION = 1
VAE_SCALING = 0.18215  # the reference's latent scale (overrides the VAE config)
MAX_MOTION_FRAMES = 24  # temporal_position_encoding_max_len of every config
LOSS_TERMS = ("recon", "sync", "lpips", "trepa")
WEIGHT_KEYS = {"recon": "recon_loss_weight", "sync": "sync_loss_weight", "lpips": "perceptual_loss_weight",
               "trepa": "trepa_loss_weight"}
REQUIRED_KEYS = (
    "model", "data.num_frames", "data.resolution", "data.batch_size", "data.train_output_dir",
    "ckpt.save_ckpt_steps", "run.seed", "run.max_train_steps", "optimizer.lr", "optimizer.max_grad_norm",
)
DEFAULT_PATHS = {  # checkpoint files the official configs do not name (added keys, SPEC 11)
    "ckpt.vae_path": "checkpoints/sd-vae-ft-mse",
    "ckpt.whisper_path": "checkpoints/whisper/tiny.pt",
    "ckpt.syncnet_ckpt_path": "checkpoints/stable_syncnet.pt",
    "ckpt.videomae_path": "checkpoints/auxiliary/vit_g_hybrid_pt_1200e_ssv2_ft.pth",
    "ckpt.vgg_path": "checkpoints/auxiliary/vgg16-397923af.pth",
    "ckpt.syncnet_v2_path": "checkpoints/auxiliary/syncnet_v2.model",
}


@dataclass
class TrainOptions:
    """Command-line choices; None means "take it from the config"."""

    unet_config_path: str | None = None
    train_output_dir: str | None = None
    max_train_steps: int | None = None
    device: str | None = None  # auto (default), cpu, cuda, cuda:N, mps
    resume_from: str | None = None  # run folder or checkpoints/training-state-<step>.pt
    run_name: str | None = None  # default train-YYYY_MM_DD-HH_MM_SS
    mixed_precision: str | None = None  # no, fp16, bf16 (default: fp16 on CUDA if run.mixed_precision_training)
    show_progress: bool = True
    overrides: list[str] = field(default_factory=list)  # OmegaConf dot-list, e.g. data.batch_size=4


@dataclass
class History:
    """Per-step losses and per-validation scores (kept in the training state for charts)."""

    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    recon: list[float] = field(default_factory=list)
    sync: list[float] = field(default_factory=list)
    lpips: list[float] = field(default_factory=list)
    trepa: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    val_step: list[int] = field(default_factory=list)
    sync_conf: list[float] = field(default_factory=list)


@dataclass
class Models:
    """Everything a training step needs besides the batch."""

    unet: torch.nn.Module
    vae: torch.nn.Module
    alphas_cumprod: torch.Tensor
    num_train_timesteps: int
    syncnet: torch.nn.Module | None = None
    syncnet_resolution: int = 256
    syncnet_lower_half: bool = True
    lpips: torch.nn.Module | None = None
    trepa: object | None = None  # TREPALoss


@dataclass
class StepSettings:
    """The `run:` settings of SPEC 7.3 that change what a step computes."""

    weights: dict
    pixel_space_supervise: bool
    use_syncnet: bool
    use_mixed_noise: bool = True
    mixed_noise_alpha: float = 1.0

    @classmethod
    def from_config(cls, config: DictConfig) -> "StepSettings":
        run = config.run
        weights = {term: float(run.get(key, 0) or 0) for term, key in WEIGHT_KEYS.items()}
        pixel = bool(run.get("pixel_space_supervise", False))
        use_sync = bool(run.get("use_syncnet", False)) and pixel and weights["sync"] > 0
        if not pixel:
            weights.update(sync=0.0, lpips=0.0, trepa=0.0)
        if not use_sync:
            weights["sync"] = 0.0
        return cls(weights, pixel, use_sync, bool(run.get("use_mixed_noise", True)),
                   float(run.get("mixed_noise_alpha", 1.0)))


# --------------------------------------------------------------------------------------------
# config and the checks that run before training


def load_config(options: TrainOptions) -> DictConfig:
    """The UNet YAML with overrides applied; missing new keys get their defaults."""
    config = load_run_config(options.unet_config_path, options.overrides, "data, ckpt, run, optimizer, model",
                             REQUIRED_KEYS, options.train_output_dir, options.max_train_steps)
    for key, default in DEFAULT_PATHS.items():
        if OmegaConf.select(config, key, default=None) is None:
            OmegaConf.update(config, key, default)
    return config


def check_config(config: DictConfig, config_path: str) -> list[str]:
    """Every check that needs no weights; returns the training clip paths. UserError on problems."""
    from latentsync.data.unet_dataset import training_clips

    data, run = config.data, config.run
    num_frames, res = int(data.num_frames), int(data.resolution)
    model = OmegaConf.to_container(config.model, resolve=True)
    levels = len(model.get("block_out_channels", []))
    if res % 8 or (res // 8) % (2 ** max(levels - 1, 0)):
        raise UserError(f"{config_path}: data.resolution {res} must be a multiple of {8 * 2 ** max(levels - 1, 0)} "
                        f"(8 x 2^(UNet levels - 1))")
    if num_frames < 1 or (model.get("use_motion_module") and num_frames > MAX_MOTION_FRAMES):
        raise UserError(f"{config_path}: data.num_frames {num_frames} must be between 1 and {MAX_MOTION_FRAMES}")
    feat_length = list(data.get("audio_feat_length", [2, 2]))
    if feat_length != [2, 2]:
        raise UserError(f"{config_path}: data.audio_feat_length {feat_length} is not supported (only [2, 2])")
    if float(data.get("video_fps", 25)) != 25:
        raise UserError(f"{config_path}: data.video_fps must be 25 (the audio chunks are built for 25 fps)")
    if int(data.batch_size) < 1:
        raise UserError(f"{config_path}: data.batch_size must be at least 1")
    if int(config.ckpt.save_ckpt_steps) < 1:
        raise UserError(f"{config_path}: ckpt.save_ckpt_steps must be at least 1")
    if config.optimizer.get("lr_scheduler", "constant") not in ("constant", "constant_with_warmup"):
        raise UserError(f"{config_path}: optimizer.lr_scheduler {config.optimizer.lr_scheduler!r}: only constant "
                        "(with optional lr_warmup_steps) is supported")
    if run.get("use_syncnet") and not run.get("pixel_space_supervise"):
        raise UserError(f"{config_path}: run.use_syncnet needs run.pixel_space_supervise: true "
                        "(the sync loss scores decoded pixels)")
    meta_unet = build_unet(model, config_path, device="meta")
    select_trainable(meta_unet, list(run.get("trainable_modules") or []))
    settings = StepSettings.from_config(config)
    if settings.use_syncnet:
        check_syncnet_config(config, config_path)
    check_files(config, config_path, settings)
    return training_clips(data.get("train_fileslist"), data.get("train_data_dir"))


def build_unet(model_section: dict, config_path: str, device="cpu"):
    """The UNet of a config's `model:` section (on the meta device for checks)."""
    from latentsync.models.unet import UNet3DConditionModel

    try:
        with torch.device(device):
            return UNet3DConditionModel.from_config(model_section)
    except (ValueError, TypeError, KeyError) as e:
        raise UserError(f"{config_path}: cannot build the UNet from the model section ({str(e).splitlines()[0]})") from None


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
    reference does 512 -> 256; upscaling or non-integer factors are refused). A meta-device forward
    pass then checks that its encoders accept those shapes."""
    from latentsync.audio import mel_window_length
    from latentsync.models.stable_syncnet import StableSyncNet

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
    height = sn_res // 2 if lower_half else sn_res
    frames = torch.zeros(1, 3 * num_frames, height, sn_res, device="meta")
    mel = torch.zeros(1, 1, 80, mel_window_length(num_frames), device="meta")
    try:
        with torch.device("meta"):
            model = StableSyncNet.from_config(sn_config.model)
        vision, audio = model(frames, mel)
    except (RuntimeError, ValueError, TypeError) as e:
        raise UserError(f"{sn_path}: the SyncNet does not accept {num_frames} frames of {height}x{sn_res} and a "
                        f"{mel.shape[-1]}-column mel ({str(e).splitlines()[0]})") from None
    if vision.shape != audio.shape:
        raise UserError(f"{sn_path}: visual and audio embeddings differ in size ({list(vision.shape[1:])} vs "
                        f"{list(audio.shape[1:])}) for {num_frames} frames of {height}x{sn_res}")


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


def resolve_mask(configured, config_path: str = "config") -> Path:
    """data.mask_image_path as given, or relative to the repository; the packaged mask if unset."""
    from latentsync.face.mask import DEFAULT_MASK_PATH

    if not configured:
        return DEFAULT_MASK_PATH
    for candidate in (Path(configured), REPO / configured):
        if candidate.is_file():
            return candidate
    raise UserError(f"{config_path}: data.mask_image_path: {configured}: not found")


def make_accelerator(config: DictConfig, options: TrainOptions):
    """An `accelerate.Accelerator` on the requested device; mixed precision from the options, else
    fp16 if run.mixed_precision_training (fp16 only on CUDA)."""
    default = "fp16" if config.run.get("mixed_precision_training", False) else "no"
    return state_lib.make_accelerator(options.device, options.mixed_precision, default)


# --------------------------------------------------------------------------------------------
# models


def load_initial_weights(unet: torch.nn.Module, path: str) -> int:
    """Load `ckpt.resume_ckpt_path` into the UNet; returns its global_step.

    Strict, except: motion-module weights may be missing (stage 2 from a stage-1 file: they keep
    their identity initialisation), and the reference's rules for SD-1.5 files drop `conv_in.*` /
    `conv_out.*` and `attn2.to_k/to_v` whose shapes differ from the config (SPEC 4.9).
    A diffusers folder (with `diffusion_pytorch_model.safetensors`, or under `unet/`) is accepted.
    """
    from latentsync.models.checkpoint import COMPUTED_BUFFER_SUFFIX, load_into, read_state_dict, rename_v1_keys

    file = Path(path)
    if file.is_dir():
        candidates = [file / "diffusion_pytorch_model.safetensors", file / "unet" / "diffusion_pytorch_model.safetensors",
                      file / "diffusion_pytorch_model.bin", file / "unet" / "diffusion_pytorch_model.bin"]
        found = [c for c in candidates if c.is_file()]
        if not found:
            raise UserError(f"{path}: folder without diffusion_pytorch_model.safetensors (or unet/...)")
        file = found[0]
    checkpoint = read_state_dict(file)
    state_dict = rename_v1_keys(checkpoint.state_dict)
    expected = unet.state_dict()
    dropped = []
    for prefix in ("conv_in.", "conv_out."):
        weight = prefix + "weight"
        if weight in state_dict and weight in expected and state_dict[weight].shape != expected[weight].shape:
            dropped += [k for k in state_dict if k.startswith(prefix)]
    dropped += [k for k in state_dict if ("attn2.to_k." in k or "attn2.to_v." in k) and k in expected
                and state_dict[k].shape != expected[k].shape]
    for key in dropped:
        del state_dict[key]
    missing = [k for k in expected if k not in state_dict and not k.endswith(COMPUTED_BUFFER_SUFFIX)]
    motion = [k for k in missing if ".motion_modules." in k]
    tolerated = set(motion) | set(dropped)
    strict_problems = [k for k in missing if k not in tolerated] or [k for k in state_dict if k not in expected]
    load_into(unet, state_dict, str(file), strict=bool(strict_problems))
    if motion:
        logger.info("%s: no motion-module weights (%d tensors keep their identity initialisation)", file, len(motion))
    if dropped:
        logger.info("%s: dropped %d tensors whose shapes differ from the config (SD-1.5 rules): %s", file,
                    len(dropped), ", ".join(dropped[:6]) + (" ..." if len(dropped) > 6 else ""))
    return checkpoint.global_step


def build_models(config: DictConfig, device: torch.device, weight_dtype: torch.dtype, settings: StepSettings) -> Models:
    """Frozen VAE / SyncNet / LPIPS / VideoMAE on `device`; the UNet (fp32) is built by the caller."""
    from diffusers import DDIMScheduler

    from latentsync.pipelines.lipsync_pipeline import SCHEDULER_CONFIG, load_vae

    run, ckpt = config.run, config.ckpt
    checkpointing = bool(run.get("enable_gradient_checkpointing", False))
    allow_random = bool(run.get("allow_random_aux_weights", False))
    scheduler = DDIMScheduler(**SCHEDULER_CONFIG)
    vae = load_vae(str(ckpt.vae_path), device, weight_dtype).requires_grad_(False)
    if checkpointing and settings.pixel_space_supervise:
        vae.enable_gradient_checkpointing()
    models = Models(unet=None, vae=vae, alphas_cumprod=scheduler.alphas_cumprod.clone(),
                    num_train_timesteps=int(scheduler.config.num_train_timesteps))
    if settings.use_syncnet:
        from latentsync.models.checkpoint import load_syncnet

        _, models.syncnet_resolution, models.syncnet_lower_half = syncnet_settings(config, "config")
        syncnet = load_syncnet(config.data.syncnet_config_path, ckpt.syncnet_ckpt_path, device, weight_dtype)
        models.syncnet = freeze(syncnet, checkpointing)
    if settings.weights["lpips"] > 0:
        from latentsync.losses.lpips_loss import make_lpips

        models.lpips = make_lpips(ckpt.vgg_path, allow_random_backbone=allow_random).to(device)
    if settings.weights["trepa"] > 0:
        models.trepa = build_trepa(config, device, weight_dtype, checkpointing, allow_random)
    return models


def freeze(model: torch.nn.Module, checkpointing: bool) -> torch.nn.Module:
    """Frozen network; with gradient checkpointing its blocks run in train mode (needed for the
    checkpoint path) while every dropout stays off, so outputs equal eval mode."""
    model.requires_grad_(False).eval()
    if checkpointing and hasattr(model, "gradient_checkpointing"):
        model.gradient_checkpointing = True
        model.train()
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout) or "Dropout" in type(module).__name__:
                module.eval()
    return model


def build_trepa(config: DictConfig, device, dtype, checkpointing: bool, allow_random: bool):
    """TREPA loss on the frozen VideoMAE-v2 (ViT-g/14 unless ckpt.videomae_model gives other sizes)."""
    from latentsync.losses.trepa import TREPALoss
    from latentsync.losses.videomae import VisionTransformer3D, load_videomae

    options = OmegaConf.to_container(config.ckpt.get("videomae_model") or {}, resolve=True)
    model = VisionTransformer3D(**options) if options else None
    configured = str(config.ckpt.get("videomae_path") or "")
    path = Path(configured)
    if (configured and path.is_file()) or not allow_random:
        extractor = load_videomae(path, device, dtype, model=model)
    else:
        if model is None:
            raise UserError("run.allow_random_aux_weights with no VideoMAE file needs ckpt.videomae_model sizes "
                            "(a random ViT-g/14 would not fit a CPU run)")
        logger.warning("ckpt.videomae_path %r not found: the TREPA extractor keeps RANDOM weights "
                       "(run.allow_random_aux_weights)", configured)
        extractor = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    if extractor.num_frames != int(config.data.num_frames):
        raise UserError(f"VideoMAE takes {extractor.num_frames} frames but data.num_frames is {config.data.num_frames}")
    extractor.gradient_checkpointing = checkpointing
    return TREPALoss(extractor)


# --------------------------------------------------------------------------------------------
# the training step (SPEC 7.3)


def vae_encode(vae, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Frames `[B, F, 3, H, W]` -> posterior samples x 0.18215 as `[B, 4, F, h, w]` (fp32)."""
    batch = pixels.shape[0]
    flat = rearrange(pixels, "b f c h w -> (b f) c h w").to(vae.device, vae.dtype)
    latents = vae.encode(flat).latent_dist.sample(generator=generator) * VAE_SCALING
    return rearrange(latents.float(), "(b f) c h w -> b c f h w", b=batch)


def vae_decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """Latents `[B, 4, F, h, w]` -> frames `[(B F), 3, H, W]` (with gradients)."""
    flat = rearrange(latents, "b c f h w -> (b f) c h w") / VAE_SCALING
    return vae.decode(flat.to(vae.dtype)).sample


def make_noise(shape, settings: StepSettings, generator, device) -> torch.Tensor:
    """Mixed noise (SPEC 7.3 step 2), or one frame of noise repeated over all frames."""
    from latentsync.losses.noise import mixed_noise

    if settings.use_mixed_noise:
        return mixed_noise(tuple(shape), settings.mixed_noise_alpha, generator=generator, device=device)
    frame = torch.randn((*shape[:2], 1, *shape[3:]), generator=generator, device=device)
    return frame.expand(shape).contiguous()


def syncnet_frames(pred: torch.Tensor, batch: int, resolution: int, lower_half: bool) -> torch.Tensor:
    """Decoded frames `[(B F), 3, H, W]` -> SyncNet input `[B, F*3, res/2 or res, res]` (frame-major)."""
    if pred.shape[-1] != resolution:
        pred = F.interpolate(pred, size=(resolution, resolution), mode="bicubic", align_corners=False)
    frames = rearrange(pred, "(b f) c h w -> b (f c) h w", b=batch)
    return frames[:, :, resolution // 2:, :] if lower_half else frames


def training_step(models: Models, batch: dict, settings: StepSettings, generator: torch.Generator,
                  autocast=None) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one batch (SPEC 7.3 steps 1-8) and its terms as floats (0 for terms switched off)."""
    from latentsync.losses.lpips_loss import lower_half_lpips
    from latentsync.losses.noise import one_step_x0
    from latentsync.models.stable_syncnet import sync_loss

    unet, vae = models.unet, models.vae
    device = next(p for p in unet.parameters()).device
    gt = batch["gt_pixel_values"].to(device)
    batch_size, num_frames = gt.shape[:2]
    with torch.no_grad():
        gt_latents = vae_encode(vae, gt, generator)
        masked_latents = vae_encode(vae, batch["masked_pixel_values"].to(device), generator)
        ref_latents = vae_encode(vae, batch["ref_pixel_values"].to(device), generator)
    masks = rearrange(batch["masks"].to(device).float(), "b f c h w -> (b f) c h w")
    masks = F.interpolate(masks, size=gt_latents.shape[-2:], mode="nearest")
    masks = rearrange(masks, "(b f) c h w -> b c f h w", b=batch_size)

    noise = make_noise(gt_latents.shape, settings, generator, device)
    timesteps = torch.randint(0, models.num_train_timesteps, (batch_size,), generator=generator, device=device)
    abar = models.alphas_cumprod.to(device)[timesteps].reshape(-1, 1, 1, 1, 1)
    noisy = abar.sqrt() * gt_latents + (1 - abar).sqrt() * noise  # diffusers add_noise, in fp32
    unet_input = torch.cat([noisy, masks, masked_latents, ref_latents], dim=1)
    audio = batch["audio_embeds"].to(device)
    with autocast if autocast is not None else torch.autocast(device.type, enabled=False):
        eps = unet(unet_input, timesteps, encoder_hidden_states=audio).sample
    terms = {"recon": F.mse_loss(eps.float(), noise.float())}

    if settings.pixel_space_supervise and any(settings.weights[k] > 0 for k in ("sync", "lpips", "trepa")):
        x0 = one_step_x0(noisy, eps, models.alphas_cumprod, timesteps)
        pred = vae_decode(vae, x0)  # [(B F), 3, H, W]
        gt_flat = rearrange(gt, "b f c h w -> (b f) c h w")
        if settings.weights["lpips"] > 0:
            terms["lpips"] = lower_half_lpips(models.lpips, pred, gt_flat.to(pred.dtype))
        if settings.weights["trepa"] > 0:
            as_clip = lambda x: rearrange(x, "(b f) c h w -> b c f h w", b=batch_size)  # noqa: E731
            terms["trepa"] = models.trepa(as_clip(pred), as_clip(gt_flat.to(pred.dtype)))
        if settings.use_syncnet:
            syncnet = models.syncnet
            dtype = next(syncnet.parameters()).dtype
            frames = syncnet_frames(pred, batch_size, models.syncnet_resolution, models.syncnet_lower_half)
            vision, audio_embeds = syncnet(frames.to(dtype), batch["mel"].to(device, dtype))
            terms["sync"] = sync_loss(vision, audio_embeds, torch.ones(batch_size, device=device))
    loss = sum(settings.weights[name] * value.float() for name, value in terms.items())
    return loss, {name: float(terms[name].detach()) if name in terms else 0.0 for name in LOSS_TERMS}


# --------------------------------------------------------------------------------------------
# data loading


def build_dataset(config: DictConfig, clips: list[str], encoder, settings: StepSettings, show_progress: bool):
    from latentsync.data.unet_dataset import UNetDataOptions, UNetDataset, prepare_audio_features

    data = config.data
    features = prepare_audio_features(clips, encoder, int(data.get("audio_sample_rate", 16000)), show_progress)
    options = UNetDataOptions(
        num_frames=int(data.num_frames), resolution=int(data.resolution),
        mask_path=str(resolve_mask(data.get("mask_image_path"))), fps=float(data.get("video_fps", 25)),
        sample_rate=int(data.get("audio_sample_rate", 16000)), use_mel=settings.use_syncnet,
        mel_cache_dir=data.get("audio_mel_cache_dir") or None, seed=int(config.run.seed),
        cache_frames=bool(data.get("cache_frames", False)))
    return UNetDataset(clips, features, options)


# --------------------------------------------------------------------------------------------
# run folder, checkpoints, resume


def save_checkpoints(run_dir: Path, step: int, unet, optimizer, scheduler, scaler, history: History,
                     config: DictConfig, keep_states: int) -> Path:
    """The official checkpoint (full UNet, fp32) and the training state that continues it."""
    folder = run_dir / "checkpoints"
    checkpoint = folder / CHECKPOINT_NAME.format(step=step)
    weights = {k: v.detach().to("cpu", copy=True) for k, v in unet.state_dict().items()}
    atomic_save({"state_dict": weights, "global_step": step}, checkpoint)
    state = {
        "format": STATE_FORMAT, "version": STATE_VERSION, "global_step": step, "checkpoint": checkpoint.name,
        "optimizer": optimizer.state_dict(), "lr_scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None, "rng": rng_state(),
        "history": vars(history), "config": OmegaConf.to_container(config, resolve=True),
    }
    atomic_save(state, folder / STATE_NAME.format(step=step))
    prune(folder, STATE_PATTERN, keep_states)
    return checkpoint


def lr_lambda(warmup: int):
    """Constant learning rate after an optional linear warm-up of `warmup` steps."""
    return lambda step: min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0


def make_optimizer(config: DictConfig, params: list, samples_per_step: int):
    """AdamW (PyTorch defaults, weight decay 0.01) with a constant LR after optional warm-up (SPEC 7.3 step 9)."""
    opt = config.optimizer
    lr = float(opt.lr) * (samples_per_step if opt.get("scale_lr", False) else 1)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=float(opt.get("weight_decay", 1e-2)))
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(int(opt.get("lr_warmup_steps", 0) or 0)))


def record_step(history: History, writer, step: int, loss: float, terms: dict, grad_norm: float, lr: float,
                settings: StepSettings) -> None:
    """Append a step's numbers to the history and TensorBoard (terms that are switched off are not plotted)."""
    history.step.append(step)
    history.loss.append(loss)
    history.grad_norm.append(grad_norm)
    for name in LOSS_TERMS:
        getattr(history, name).append(terms[name])
    if writer is not None:
        writer.add_scalar("train/loss", loss, step)
        for name in LOSS_TERMS:
            if settings.weights[name] > 0:
                writer.add_scalar(f"train/{name}_loss", terms[name], step)
        writer.add_scalar("train/grad_norm", grad_norm, step)
        writer.add_scalar("train/lr", lr, step)


# --------------------------------------------------------------------------------------------
# validation and charts


class Validator:
    """Runs the inference pipeline with the in-training UNet on the validation clip."""

    def __init__(self, config: DictConfig, models: Models, encoder, run_dir: Path, device):
        self.config, self.models, self.encoder, self.run_dir, self.device = config, models, encoder, run_dir, device
        self.pipeline = None
        self.syncnet_v2 = self.detector = None

    def __call__(self, unet, step: int, autocast) -> tuple[Path | None, float | None]:
        from latentsync.pipelines.lipsync_pipeline import LipsyncOptions

        data, run = self.config.data, self.config.run
        out = self.run_dir / "val_videos" / f"val_video_{step}.mp4"
        out.parent.mkdir(parents=True, exist_ok=True)
        was_training = unet.training
        unet.eval()
        try:
            pipe = self.get_pipeline(unet)
            options = LipsyncOptions(num_inference_steps=int(run.get("inference_steps", 20)),
                                     guidance_scale=float(run.get("guidance_scale", 1.5)), seed=int(run.seed),
                                     num_frames=int(data.num_frames), show_progress=False)
            with torch.no_grad(), autocast:
                pipe(data.val_video_path, data.val_audio_path, out, options)
        except Exception as e:  # a failed validation must not end a long run
            logger.warning("validation at step %d failed: %s: %s", step, type(e).__name__, str(e).splitlines()[:1])
            return None, None
        finally:
            unet.train(was_training)
        return out, self.sync_confidence(out)

    def get_pipeline(self, unet):
        from diffusers import DDIMScheduler

        from latentsync.face.detectors import make_face_detector
        from latentsync.pipelines.lipsync_pipeline import SCHEDULER_CONFIG, LipsyncPipeline

        if self.pipeline is None:
            detector = make_face_detector(str(self.config.run.get("face_detector", "mediapipe")))
            self.pipeline = LipsyncPipeline(
                vae=self.models.vae, unet=unet, scheduler=DDIMScheduler(**SCHEDULER_CONFIG),
                audio_encoder=self.encoder, face_detector=detector, resolution=int(self.config.data.resolution),
                mask_path=resolve_mask(self.config.data.get("mask_image_path")))
        return self.pipeline

    def sync_confidence(self, video: Path) -> float | None:
        """SyncNet-v2 LSE-C of the validation video (0 when scoring fails); None without its checkpoint."""
        path = Path(str(self.config.ckpt.get("syncnet_v2_path") or ""))
        if not path.is_file():
            return None
        from latentsync.eval import syncnet_v2 as sv

        try:
            if self.syncnet_v2 is None:
                self.syncnet_v2 = sv.load_syncnet_v2(path, self.device)
                self.detector = sv.make_detector("mediapipe")
            return float(sv.sync_confidence(video, self.syncnet_v2, self.detector, self.device)["lse_c"])
        except Exception as e:  # the reference counts failures as 0
            logger.warning("sync confidence of %s failed (%s); counted as 0", video, e)
            return 0.0


def save_charts(run_dir: Path, step: int, history: History, settings: StepSettings) -> None:
    curves = {"Total loss": history.loss}
    names = {"recon": "Noise-prediction (recon) loss", "sync": "Sync loss", "lpips": "LPIPS loss",
             "trepa": "TREPA loss"}
    for term, title in names.items():
        if settings.weights[term] > 0:
            curves[title] = getattr(history, term)
    save_curves(run_dir / "loss_charts" / f"loss_chart-{step}.png", history.step, curves, f"UNet training, step {step}")
    if history.val_step:
        save_curves(run_dir / "sync_conf_results" / f"sync_conf_chart-{step}.png", history.val_step,
                    {"Sync confidence": history.sync_conf}, f"Validation sync confidence, step {step}",
                    y_label="Sync confidence")


# --------------------------------------------------------------------------------------------
# the training loop


def train(options: TrainOptions) -> Path:
    """Train (or resume) a UNet run; returns the run folder."""
    from latentsync.audio import AudioEncoder

    state = None
    if options.resume_from:
        state_path = find_state_file(options.resume_from, STATE_PATTERN)
        state = read_training_state(state_path, STATE_FORMAT, "UNet")
        if not options.unet_config_path:
            options.unet_config_path = str(run_dir_of(state_path) / "config.yaml")
    if not options.unet_config_path:
        raise UserError("--unet_config_path is required (unless --resume_from names a run to continue)")
    config = load_config(options)
    config_path = options.unet_config_path
    clips = check_config(config, config_path)  # everything a user can get wrong, before any weights
    settings = StepSettings.from_config(config)
    run_dir = run_dir_of(state_path) if state is not None else new_run_dir(config.data.train_output_dir, options.run_name)
    if state is not None and not (run_dir / "checkpoints" / state["checkpoint"]).is_file():
        raise UserError(f"{run_dir / 'checkpoints' / state['checkpoint']}: checkpoint of the training state is missing")

    accelerator = make_accelerator(config, options)
    main, device = accelerator.is_main_process, accelerator.device
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    seed, rank = int(config.run.seed), accelerator.process_index
    batch_size = int(config.data.batch_size)

    # models: the UNet in fp32 (autocast does the mixed precision), the frozen ones in weight_dtype
    torch.manual_seed(seed)  # same initial weights in every process
    unet = build_unet(OmegaConf.to_container(config.model, resolve=True), config_path)
    global_step = 0
    if state is not None:
        from latentsync.models.checkpoint import load_into, read_state_dict

        checkpoint_file = run_dir / "checkpoints" / state["checkpoint"]
        load_into(unet, read_state_dict(checkpoint_file).state_dict, str(checkpoint_file))
        global_step = int(state["global_step"])
    elif config.ckpt.get("resume_ckpt_path"):
        global_step = load_initial_weights(unet, str(config.ckpt.resume_ckpt_path))
    trainable_names = select_trainable(unet, list(config.run.get("trainable_modules") or []))
    unet.to(device).train()
    if config.run.get("enable_gradient_checkpointing", False):
        unet.enable_gradient_checkpointing()
    models = build_models(config, device, weight_dtype, settings)
    models.unet = unet
    encoder = AudioEncoder(str(config.ckpt.whisper_path), device=device,
                           cache_dir=config.data.get("audio_embeds_cache_dir") or (run_dir / "audio_embeds"))
    if encoder.dim != unet.config.cross_attention_dim:
        raise UserError(f"{config.ckpt.whisper_path}: gives {encoder.dim}-d features but the UNet has "
                        f"cross_attention_dim {unet.config.cross_attention_dim}")
    with accelerator.main_process_first():  # process 0 fills the feature cache, the others read it
        dataset = build_dataset(config, clips, encoder, settings, options.show_progress and main)

    trainable = [p for p in unet.parameters() if p.requires_grad]
    optimizer, scheduler = make_optimizer(config, trainable, batch_size * accelerator.num_processes)
    history = History()
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["lr_scheduler"])
        history = History(**state["history"])
    unet_ddp, optimizer = accelerator.prepare(unet, optimizer)
    scaler = accelerator.scaler
    if state is not None:
        if state.get("scaler") is not None and scaler is not None:
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        logger.info("resuming %s at step %d", run_dir, global_step)

    steps_per_epoch = max(1, math.ceil(len(dataset) / (batch_size * accelerator.num_processes)))
    max_steps = int(config.run.max_train_steps)
    if int(config.run.get("max_train_epochs", -1)) > 0:
        max_steps = min(max_steps, int(config.run.max_train_epochs) * steps_per_epoch)
    save_steps = int(config.ckpt.save_ckpt_steps)
    validation_steps = int(config.run.get("validation_steps") or save_steps)
    keep_states = int(config.ckpt.get("keep_training_states", 1))
    max_grad_norm = float(config.optimizer.max_grad_norm)

    writer = validator = None
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(config, run_dir / "config.yaml")
        if settings.use_syncnet:
            shutil.copyfile(config.data.syncnet_config_path, run_dir / "syncnet_config.yaml")
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=global_step if state is not None else None)
        if config.data.get("val_video_path"):
            validator = Validator(config, models, encoder, run_dir, device)
        logger.info("run folder %s: %d clips, %d of %d UNet tensors trainable, device %s, mixed precision %s, "
                    "loss weights %s", run_dir, len(clips), len(trainable_names),
                    len(list(unet.parameters())), device, accelerator.mixed_precision, settings.weights)

    workers = int(config.data.get("num_workers", 0))
    sampler = IndexBatches(batch_size, start=global_step, rank=rank, world_size=accelerator.num_processes)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                                         pin_memory=device.type == "cuda")
    batches = iter(loader)
    progress = tqdm(total=max_steps, initial=global_step, desc="Steps", disable=not (main and options.show_progress),
                    dynamic_ncols=True)
    models.unet = unet_ddp
    while global_step < max_steps:
        batch = next(batches)
        generator = step_generator(device, "unet-step", seed, rank, global_step)
        loss, terms = training_step(models, batch, settings, generator, accelerator.autocast())
        accelerator.backward(loss)
        grad_norm = accelerator.clip_grad_norm_(trainable, max_grad_norm)
        grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
        if scaler is None and not math.isfinite(grad_norm):
            logger.warning("step %d: non-finite gradients (loss %s); optimiser step skipped", global_step + 1, terms)
            optimizer.zero_grad(set_to_none=True)
        else:
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        global_step += 1

        step_loss = accelerator.reduce(loss.detach(), "mean").item()
        terms = {k: accelerator.reduce(torch.tensor(v, device=device), "mean").item() for k, v in terms.items()}
        record_step(history, writer, global_step, step_loss, terms, grad_norm, scheduler.get_last_lr()[0], settings)
        progress.update(1)
        progress.set_postfix(step_loss=f"{step_loss:.4f}", epoch=(global_step - 1) // steps_per_epoch)

        last = global_step == max_steps
        if validator is not None and (global_step % validation_steps == 0 or last):
            video, confidence = validator(accelerator.unwrap_model(unet_ddp), global_step, accelerator.autocast())
            if video is not None:
                progress.write(f"step {global_step}: validation video {video}")
            if confidence is not None:
                history.val_step.append(global_step)
                history.sync_conf.append(confidence)
                writer.add_scalar("val/sync_confidence", confidence, global_step)
        if global_step % save_steps == 0 or last:
            accelerator.wait_for_everyone()
            if main:
                path = save_checkpoints(run_dir, global_step, accelerator.unwrap_model(unet_ddp), optimizer,
                                        scheduler, scaler, history, config, keep_states)
                save_charts(run_dir, global_step, history, settings)
                progress.write(f"step {global_step}: saved {path}")
    progress.close()
    if writer is not None:
        writer.close()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return run_dir
