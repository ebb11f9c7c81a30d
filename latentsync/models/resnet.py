"""Inflated 2D layers of the UNet (docs/architecture.md): convs run per frame, resnet GroupNorms span all frames."""

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def per_frame(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a 2D layer to every frame of x [B, C, F, H, W]."""
    frames = x.shape[2]
    y = layer(rearrange(x, "b c f h w -> (b f) c h w"))
    return rearrange(y, "(b f) c h w -> b c f h w", f=frames)


class ResnetBlock3D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, groups: int, eps: float,
                 output_scale_factor: float = 1.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        self.output_scale_factor = output_scale_factor

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = per_frame(self.conv1, F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None, None]
        h = per_frame(self.conv2, F.silu(self.norm2(h)))
        shortcut = x if self.conv_shortcut is None else per_frame(self.conv_shortcut, x)
        return (shortcut + h) / self.output_scale_factor


class Downsample3D(nn.Module):
    def __init__(self, channels: int, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return per_frame(self.conv, x)


class Upsample3D(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, output_size: tuple[int, int] | None = None) -> torch.Tensor:
        dtype = x.dtype
        if dtype == torch.bfloat16:  # nearest upsampling is not implemented for bf16 everywhere
            x = x.float()
        size = (x.shape[2], *output_size) if output_size is not None else None
        scale = None if size is not None else (1.0, 2.0, 2.0)
        x = F.interpolate(x, size=size, scale_factor=scale, mode="nearest").to(dtype)
        return per_frame(self.conv, x)
