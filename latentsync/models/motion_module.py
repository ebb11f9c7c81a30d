"""Temporal "motion" modules (AnimateDiff-style, see docs/architecture.md): attention across the frames of a segment."""

import math

import torch
from einops import rearrange
from torch import nn

from latentsync.models.attention import Attention, FeedForward

MOTION_MODULE_GROUPS = 32  # fixed in the reference, independent of norm_num_groups


def sinusoidal_positions(max_len: int, dim: int) -> torch.Tensor:
    """[1, max_len, dim] table: pe[p, 2i] = sin(p w_i), pe[p, 2i+1] = cos(p w_i)."""
    position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)
    freqs = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(1, max_len, dim)
    pe[0, :, 0::2] = torch.sin(position * freqs)
    pe[0, :, 1::2] = torch.cos(position * freqs)
    return pe


class PositionalEncoding(nn.Module):
    def __init__(self, dim: int, max_len: int):
        super().__init__()
        self.register_buffer("pe", sinusoidal_positions(max_len, dim), persistent=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] > self.pe.shape[1]:
            raise ValueError(f"segment of {x.shape[1]} frames exceeds the motion module's "
                             f"maximum of {self.pe.shape[1]}")
        return x + self.pe[:, : x.shape[1]].to(x.dtype)


class TemporalAttention(Attention):
    """Self-attention over frames: one sequence per (batch element, spatial position)."""

    def __init__(self, dim: int, heads: int, max_len: int, use_position_encoding: bool):
        super().__init__(dim, heads)
        self.pos_encoder = PositionalEncoding(dim, max_len) if use_position_encoding else None

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        h = rearrange(x, "(b f) n c -> (b n) f c", f=frames)
        if self.pos_encoder is not None:
            h = self.pos_encoder(h)
        h = super().forward(h)
        return rearrange(h, "(b n) f c -> (b f) n c", n=x.shape[1])


class TemporalTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, num_attention_blocks: int, max_len: int,
                 use_position_encoding: bool):
        super().__init__()
        self.attention_blocks = nn.ModuleList(
            [TemporalAttention(dim, heads, max_len, use_position_encoding) for _ in range(num_attention_blocks)])
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(num_attention_blocks)])
        self.ff = FeedForward(dim)
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        for attention, norm in zip(self.attention_blocks, self.norms):
            x = x + attention(norm(x), frames)
        return x + self.ff(self.ff_norm(x))


class TemporalTransformer3DModel(nn.Module):
    def __init__(self, channels: int, heads: int, num_blocks: int, num_attention_blocks: int, max_len: int,
                 use_position_encoding: bool, zero_initialize: bool):
        super().__init__()
        self.norm = nn.GroupNorm(MOTION_MODULE_GROUPS, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList(
            [TemporalTransformerBlock(channels, heads, num_attention_blocks, max_len, use_position_encoding)
             for _ in range(num_blocks)])
        self.proj_out = nn.Linear(channels, channels)
        if zero_initialize:  # a fresh module is an identity
            nn.init.zeros_(self.proj_out.weight)
            nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, F, H, W] -> same shape."""
        frames, height = x.shape[2], x.shape[3]
        residual = x
        h = rearrange(x, "b c f h w -> (b f) c h w")
        h = rearrange(self.norm(h), "n c h w -> n (h w) c")
        h = self.proj_in(h)
        for block in self.transformer_blocks:
            h = block(h, frames)
        h = self.proj_out(h)
        h = rearrange(h, "(b f) (h w) c -> b c f h w", f=frames, h=height)
        return h + residual


class VanillaTemporalModule(nn.Module):
    """The motion module as configured by `motion_module_kwargs` (keys `temporal_transformer.*`)."""

    def __init__(self, channels: int, num_attention_heads: int = 8, num_transformer_block: int = 1,
                 attention_block_types: tuple = ("Temporal_Self", "Temporal_Self"),
                 temporal_position_encoding: bool = True, temporal_position_encoding_max_len: int = 24,
                 temporal_attention_dim_div: int = 1, zero_initialize: bool = True):
        super().__init__()
        if any(kind != "Temporal_Self" for kind in attention_block_types):
            raise ValueError(f"unsupported motion attention block types {list(attention_block_types)}")
        if temporal_attention_dim_div != 1:
            raise ValueError("temporal_attention_dim_div other than 1 is not supported")
        self.temporal_transformer = TemporalTransformer3DModel(
            channels, num_attention_heads, num_transformer_block, len(attention_block_types),
            temporal_position_encoding_max_len, temporal_position_encoding, zero_initialize)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.temporal_transformer(x)
