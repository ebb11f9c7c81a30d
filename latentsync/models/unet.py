"""The LatentSync UNet: an inflated Stable-Diffusion-1.5 UNet with audio cross-attention (see docs/architecture.md).

Input `[B, 13, F, h, w]`, channels in this fixed order (`unet_input` builds it, for inference and
training alike):
  0-3   noisy latents x_t (scaled as the UNet's scheduler scales them),
  4     the inpainting mask at latent size (nearest neighbour; 1 = keep the source, 0 = generate),
  5-8   VAE latents of the masked face (the generated region grey),
  9-12  VAE latents of the reference face;
audio tokens `[B*F, 50, 384]` (or `[B, F, 50, 384]`); output the predicted noise `[B, 4, F, h, w]`.
Latents are VAE posterior samples shifted and scaled by the VAE's config (latentsync/models/vae.py).
"""

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from einops import rearrange
from torch import nn

from latentsync.models.resnet import per_frame
from latentsync.models.unet_blocks import DownBlock3D, UNetMidBlock3DCrossAttn, UpBlock3D

CROSS_ATTN_BLOCKS = {"CrossAttnDownBlock3D", "CrossAttnUpBlock3D"}
DOWN_BLOCKS = {"CrossAttnDownBlock3D", "DownBlock3D"}
UP_BLOCKS = {"CrossAttnUpBlock3D", "UpBlock3D"}
DEFAULT_MOTION_KWARGS = {
    "num_attention_heads": 8, "num_transformer_block": 1,
    "attention_block_types": ["Temporal_Self", "Temporal_Self"], "temporal_position_encoding": True,
    "temporal_position_encoding_max_len": 24, "temporal_attention_dim_div": 1, "zero_initialize": True,
}


class Conditioning(NamedTuple):
    """Channels 4-12 of the UNet input: what a batch is generated from besides the noise and the audio."""

    mask: torch.Tensor  # [B, 1, F, h, w], 1 = keep
    masked_latents: torch.Tensor  # [B, 4, F, h, w]
    ref_latents: torch.Tensor  # [B, 4, F, h, w]

    def repeated(self, times: int) -> "Conditioning":
        """The batch `times` over (classifier-free guidance runs the null-audio and audio halves together)."""
        return Conditioning(*(torch.cat([x] * times) for x in self))


def unet_input(noisy_latents: torch.Tensor, conditioning: Conditioning) -> torch.Tensor:
    """The UNet input `[B, 13, F, h, w]` in the module docstring's channel order."""
    return torch.cat([noisy_latents, *conditioning], dim=1)


@dataclass
class UNet3DConditionOutput(BaseOutput):
    sample: torch.Tensor


@dataclass
class DeepCache:
    """DeepCache state (docs/architecture.md): the deep features are recomputed every `interval` steps.

    On the other steps only `conv_in` and the last layer of the last up block run, on the stored
    output of the layer before it. The pipeline owns one instance per call.
    """

    interval: int = 3
    stored: torch.Tensor | None = field(default=None, repr=False)

    def reuse(self, step_index: int) -> bool:
        return self.stored is not None and step_index % self.interval != 0


class UNet3DConditionModel(ModelMixin, ConfigMixin):
    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        sample_size: int = 64,
        in_channels: int = 13,
        out_channels: int = 4,
        center_input_sample: bool = False,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: tuple = ("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
        mid_block_type: str = "UNetMidBlock3DCrossAttn",
        up_block_types: tuple = ("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3,
        block_out_channels: tuple = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        act_fn: str = "silu",
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int = 384,
        attention_head_dim: int = 8,
        resnet_time_scale_shift: str = "default",
        add_audio_layer: bool = True,
        use_motion_module: bool = False,
        motion_module_resolutions: tuple = (1, 2, 4, 8),
        motion_module_mid_block: bool = False,
        motion_module_decoder_only: bool = False,
        motion_module_type: str = "Vanilla",
        motion_module_kwargs: dict | None = None,
    ):
        super().__init__()
        self._check_supported(down_block_types, mid_block_type, up_block_types, act_fn, resnet_time_scale_shift,
                              motion_module_type, motion_module_mid_block, len(block_out_channels))
        motion_kwargs = {**DEFAULT_MOTION_KWARGS, **dict(motion_module_kwargs or {})}
        time_dim = block_out_channels[0] * 4
        heads = attention_head_dim  # the reference uses this field as the number of heads

        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], 3, padding=1)
        self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(block_out_channels[0], time_dim)

        def common(with_attention, motion_here):
            return dict(temb_channels=time_dim, groups=norm_num_groups, eps=norm_eps, heads=heads,
                        cross_attention_dim=cross_attention_dim, with_attention=with_attention,
                        add_audio_layer=add_audio_layer,
                        motion_kwargs=motion_kwargs if (use_motion_module and motion_here) else None)

        self.down_blocks = nn.ModuleList()
        channels = block_out_channels[0]
        for i, block_type in enumerate(down_block_types):
            out = block_out_channels[i]
            motion_here = (2 ** i in motion_module_resolutions) and not motion_module_decoder_only
            self.down_blocks.append(DownBlock3D(
                channels, out, layers_per_block, add_downsample=i < len(block_out_channels) - 1,
                downsample_padding=downsample_padding, **common(block_type in CROSS_ATTN_BLOCKS, motion_here)))
            channels = out

        self.mid_block = UNetMidBlock3DCrossAttn(
            block_out_channels[-1], time_dim, norm_num_groups, norm_eps, heads, cross_attention_dim,
            add_audio_layer, output_scale_factor=mid_block_scale_factor)

        self.up_blocks = nn.ModuleList()
        reversed_channels = list(reversed(block_out_channels))
        prev = reversed_channels[0]
        for i, block_type in enumerate(up_block_types):
            out = reversed_channels[i]
            skip_in = reversed_channels[min(i + 1, len(block_out_channels) - 1)]
            motion_here = 2 ** (len(block_out_channels) - 1 - i) in motion_module_resolutions
            self.up_blocks.append(UpBlock3D(
                skip_in, prev, out, layers_per_block + 1, add_upsample=i < len(block_out_channels) - 1,
                **common(block_type in CROSS_ATTN_BLOCKS, motion_here)))
            prev = out

        self.conv_norm_out = nn.GroupNorm(norm_num_groups, block_out_channels[0], eps=norm_eps)
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, 3, padding=1)
        for conv in (self.conv_in, self.conv_out):  # zero-initialised at construction, as the reference
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    @property
    def max_frames(self) -> int | None:
        """Most frames one forward pass can take: the motion modules' positional encoding covers
        `temporal_position_encoding_max_len` frames (24 in the released configs); None = no limit."""
        config = self.config
        kwargs = {**DEFAULT_MOTION_KWARGS, **dict(config.motion_module_kwargs or {})}
        if not config.use_motion_module or not kwargs["temporal_position_encoding"]:
            return None
        return int(kwargs["temporal_position_encoding_max_len"])

    @staticmethod
    def _check_supported(down_types, mid_type, up_types, act_fn, shift, motion_type, motion_mid, levels):
        problems = [f"down block type {t!r}" for t in down_types if t not in DOWN_BLOCKS]
        problems += [f"up block type {t!r}" for t in up_types if t not in UP_BLOCKS]
        if mid_type != "UNetMidBlock3DCrossAttn":
            problems.append(f"mid_block_type {mid_type!r}")
        if act_fn != "silu":
            problems.append(f"act_fn {act_fn!r}")
        if shift != "default":
            problems.append(f"resnet_time_scale_shift {shift!r}")
        if motion_type != "Vanilla":
            problems.append(f"motion_module_type {motion_type!r}")
        if motion_mid:
            problems.append("motion_module_mid_block: true")
        if len(down_types) != levels or len(up_types) != levels:
            problems.append("block type lists must match block_out_channels in length")
        if problems:
            raise ValueError("unsupported UNet config: " + "; ".join(problems))

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor | None = None,
        return_dict: bool = True,
        deep_cache: DeepCache | None = None,
        step_index: int = 0,
    ):
        batch, _, frames = sample.shape[:3]
        if self.config.center_input_sample:
            sample = 2 * sample - 1.0
        temb = self.time_embedding(self._timestep_features(timestep, batch, sample).to(sample.dtype))
        audio = encoder_hidden_states
        if audio is not None and audio.dim() == 4:
            audio = rearrange(audio, "b f n d -> (b f) n d")

        h = per_frame(self.conv_in, sample)
        last_up = self.up_blocks[-1]
        if deep_cache is not None and deep_cache.reuse(step_index):
            h = last_up(deep_cache.stored, [h], temb, audio, first_layer=len(last_up.resnets) - 1)
        else:
            skips = [h]
            for block in self.down_blocks:
                h, block_skips = block(h, temb, audio)
                skips += block_skips
            h = self.mid_block(h, temb, audio)
            for block in self.up_blocks[:-1]:
                h = block(h, skips, temb, audio)
            if deep_cache is not None:
                h = last_up.partial(h, skips, temb, audio)
                deep_cache.stored = h
                h = last_up(h, skips, temb, audio, first_layer=len(last_up.resnets) - 1)
            else:
                h = last_up(h, skips, temb, audio)

        h = F.silu(self.conv_norm_out(h))
        out = per_frame(self.conv_out, h)
        return UNet3DConditionOutput(sample=out) if return_dict else (out,)

    def _timestep_features(self, timestep, batch: int, sample: torch.Tensor) -> torch.Tensor:
        t = timestep if torch.is_tensor(timestep) else torch.tensor(timestep)
        t = t.to(sample.device)
        if t.dim() == 0:
            t = t[None]
        return self.time_proj(t.expand(batch))
