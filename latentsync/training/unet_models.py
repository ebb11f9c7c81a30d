"""The networks of UNet training: initial UNet weights (stage 2 from stage 1, SD-1.5 files) and the
frozen helpers of the losses (VAE, SyncNet, LPIPS backbone, VideoMAE for TREPA)."""

import logging
from pathlib import Path

import torch

from latentsync.errors import UserError
from latentsync.loading import load_vae
from latentsync.losses.lpips_loss import make_lpips
from latentsync.losses.trepa import TREPALoss
from latentsync.losses.videomae import VisionTransformer3D, load_videomae
from latentsync.models.checkpoint import (COMPUTED_BUFFER_SUFFIX, load_into, load_syncnet, read_state_dict,
                                          rename_v1_keys)
from latentsync.schedulers import make_scheduler
from latentsync.training.core import History
from latentsync.training.unet_config import UNetConfig, syncnet_settings
from latentsync.training.unet_step import LatentCache, Models, StepSettings

logger = logging.getLogger(__name__)

DIFFUSERS_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.safetensors",
                          "diffusion_pytorch_model.bin", "unet/diffusion_pytorch_model.bin")
LOGGED_KEYS = 6


def weights_file(path: str) -> Path:
    """The file itself, or the UNet weights inside a diffusers folder."""
    file = Path(path)
    if not file.is_dir():
        return file
    found = [file / name for name in DIFFUSERS_WEIGHT_FILES if (file / name).is_file()]
    if not found:
        raise UserError(f"{path}: folder without diffusion_pytorch_model.safetensors (or unet/...)")
    return found[0]


def sd15_dropped_keys(state_dict: dict, expected: dict) -> list[str]:
    """The reference's rules for SD-1.5 files: `conv_in.*` / `conv_out.*` and `attn2.to_k/to_v`
    tensors whose shapes differ from the config are not loaded."""
    dropped = []
    for prefix in ("conv_in.", "conv_out."):
        weight = prefix + "weight"
        if weight in state_dict and weight in expected and state_dict[weight].shape != expected[weight].shape:
            dropped += [k for k in state_dict if k.startswith(prefix)]
    dropped += [k for k in state_dict if ("attn2.to_k." in k or "attn2.to_v." in k) and k in expected
                and state_dict[k].shape != expected[k].shape]
    return dropped


def load_initial_weights(unet: torch.nn.Module, path: str) -> tuple[int, History]:
    """Load `ckpt.resume_ckpt_path` into the UNet; returns its global_step and an empty history
    (the same signature as the SyncNet trainer's: its official checkpoints carry a history).

    Strict, except: motion-module weights may be missing (stage 2 from a stage-1 file: they keep
    their identity initialisation), and SD-1.5 tensors of other shapes are dropped (see
    `sd15_dropped_keys`). A diffusers folder (with `diffusion_pytorch_model.safetensors`, or under
    `unet/`) is accepted.
    """
    file = weights_file(path)
    checkpoint = read_state_dict(file)
    state_dict = rename_v1_keys(checkpoint.state_dict)
    expected = unet.state_dict()
    dropped = sd15_dropped_keys(state_dict, expected)
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
        logger.info("%s: dropped %d tensors whose shapes differ from the config (SD-1.5 rules): %s", file, len(dropped),
                    ", ".join(dropped[:LOGGED_KEYS]) + (" ..." if len(dropped) > LOGGED_KEYS else ""))
    return checkpoint.global_step, History()


def build_models(config: UNetConfig, unet: torch.nn.Module, device: torch.device, weight_dtype: torch.dtype,
                 settings: StepSettings) -> Models:
    """The UNet (fp32, built by the caller) with the frozen VAE / SyncNet / LPIPS / VideoMAE on `device`."""
    run, ckpt = config.run, config.ckpt
    checkpointing, allow_random = run.gradient_checkpointing, run.allow_random_aux_weights
    scheduler = make_scheduler()
    vae = load_vae(str(ckpt.vae_path), device, weight_dtype).requires_grad_(False)
    if checkpointing and settings.pixel_space_supervise:
        vae.enable_gradient_checkpointing()
    models = Models(unet=unet, vae=vae, scheduler=scheduler)
    if config.data.cache_latents:
        models.latent_cache = LatentCache(vae)
    if settings.use_syncnet:
        _, models.syncnet_resolution, models.syncnet_lower_half = syncnet_settings(config, "config")
        syncnet = load_syncnet(config.data.syncnet_config_path, ckpt.syncnet_ckpt_path, device, weight_dtype)
        models.syncnet = freeze(syncnet, checkpointing)
    if settings.weights["lpips"] > 0:
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


def build_trepa(config: UNetConfig, device, dtype, checkpointing: bool, allow_random: bool) -> TREPALoss:
    """TREPA loss on the frozen VideoMAE-v2 (ViT-g/14 unless ckpt.videomae_model gives other sizes)."""
    options = dict(config.ckpt.videomae_model or {})
    model = VisionTransformer3D(**options) if options else None
    configured = str(config.ckpt.videomae_path or "")
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
    if extractor.num_frames != config.data.num_frames:
        raise UserError(f"VideoMAE takes {extractor.num_frames} frames but data.num_frames is {config.data.num_frames}")
    extractor.gradient_checkpointing = checkpointing
    return TREPALoss(extractor)
