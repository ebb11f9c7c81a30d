"""Reading checkpoints safely and loading them strictly into the networks.

Accepted files: the official `.pt` dicts (`{"state_dict": ..., "global_step"?: int}`), plain
state dicts, and safetensors. Pickles are read with `weights_only=True` only. LatentSync 1.0
UNet keys (`audio_cross_attn.*`) are renamed to the 1.5+ names. Loading is strict by default:
a wrong config is reported key by key instead of loading silently.
"""

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf
from safetensors import SafetensorError
from safetensors.torch import load_file

from latentsync.errors import UserError
from latentsync.io import load_torch_file, read_yaml

logger = logging.getLogger(__name__)

V1_RENAMES = (("audio_cross_attn.attn.", "attn2."), ("audio_cross_attn.norm.", "norm2."))
COMPUTED_BUFFER_SUFFIX = "pos_encoder.pe"  # fully determined by the config; optional in files
REPORT_LINES = 8


@dataclass
class Checkpoint:
    state_dict: dict[str, torch.Tensor]
    global_step: int = 0


def read_state_dict(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint file without executing code; raise UserError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint file not found")
    if path.suffix == ".safetensors":
        try:
            return Checkpoint(load_file(str(path)))
        except (SafetensorError, OSError, ValueError) as exc:
            raise UserError(f"{path}: not a readable safetensors file ({exc})") from None
    obj = load_torch_file(path, "PyTorch checkpoint")
    step = 0
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        step = int(obj.get("global_step", 0) or 0)
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise UserError(f"{path}: expected a state dict of tensors (or a dict with a 'state_dict' entry)")
    return Checkpoint(dict(obj), step)


def rename_v1_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map LatentSync 1.0 audio-attention names onto the 1.5+ names (a no-op for newer files)."""
    renamed = {}
    for key, value in state_dict.items():
        for old, new in V1_RENAMES:
            key = key.replace(old, new)
        renamed[key] = value
    return renamed


def load_into(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str, strict: bool = True,
              hint: str = "") -> None:
    """Copy `state_dict` into `model`, refusing missing/unexpected keys and shape mismatches.

    Position tables (`pos_encoder.pe`) may be absent: they are computed from the config.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict and not k.endswith(COMPUTED_BUFFER_SUFFIX)]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
                  for k in state_dict if k in expected and state_dict[k].shape != expected[k].shape]
    problems = _report(missing, "missing from the file") + _report(unexpected, "unexpected in the file") \
        + _report(mismatched, "with a different shape")
    if problems and strict:
        raise UserError(f"{source}: does not match the model config: " + "; ".join(problems) + hint)
    if problems:
        logger.warning("%s: loading non-strictly: %s", source, "; ".join(problems))
    usable = {k: v for k, v in state_dict.items() if k in expected and v.shape == expected[k].shape}
    model.load_state_dict(usable, strict=False)


def _report(items: list[str], what: str) -> list[str]:
    if not items:
        return []
    shown = ", ".join(items[:REPORT_LINES]) + (f", ... (+{len(items) - REPORT_LINES} more)" if len(items) > REPORT_LINES else "")
    return [f"{len(items)} keys {what} ({shown})"]


def model_section(config) -> dict:
    """The `model:` section of a YAML path, OmegaConf object or dict (or the dict itself)."""
    if isinstance(config, (str, os.PathLike)):
        config = read_yaml(config)
    if not isinstance(config, dict):
        config = OmegaConf.to_container(config, resolve=True)
    return dict(config.get("model", config))


def _unet_hint(config: dict, state_dict: dict) -> str:
    has_motion = any(".motion_modules." in k for k in state_dict)
    if has_motion and not config.get("use_motion_module"):
        return " (the file has motion modules: use a stage2 config such as configs/unet/stage2.yaml)"
    if not has_motion and config.get("use_motion_module"):
        return (" (the file has no motion modules: a LatentSync 1.0 or stage-1 checkpoint needs "
                "configs/unet/v1.0.yaml or stage1.yaml; pass strict=False to start stage 2 from it)")
    return ""


def load_unet(config_path, ckpt_path, device="cpu", dtype=torch.float32, strict: bool = True):
    """Build the UNet from a config and load a checkpoint into it (official .pt, state dict, safetensors)."""
    from latentsync.models.unet import UNet3DConditionModel

    config = model_section(config_path)
    checkpoint = read_state_dict(ckpt_path)
    state_dict = rename_v1_keys(checkpoint.state_dict)
    unet = UNet3DConditionModel.from_config(config)
    load_into(unet, state_dict, str(ckpt_path), strict, _unet_hint(config, state_dict))
    unet.global_step = checkpoint.global_step
    return torch.nn.Module.to(unet, device=device, dtype=dtype)


def load_syncnet(config_path, ckpt_path, device="cpu", dtype=torch.float32, strict: bool = True):
    """Build StableSyncNet from a config and load a checkpoint into it strictly."""
    from latentsync.models.stable_syncnet import StableSyncNet

    config = model_section(config_path)
    checkpoint = read_state_dict(ckpt_path)
    syncnet = StableSyncNet.from_config(config)
    load_into(syncnet, checkpoint.state_dict, str(ckpt_path), strict)
    syncnet.global_step = checkpoint.global_step
    return torch.nn.Module.to(syncnet, device=device, dtype=dtype)
