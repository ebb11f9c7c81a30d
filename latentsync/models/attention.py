"""Attention building blocks of the LatentSync UNet (see docs/architecture.md).

`Attention` and `FeedForward` are shared by the spatial transformer and the motion module;
`Transformer3DModel` is the per-frame spatial transformer whose `attn2` attends to the
frame's Whisper audio tokens.
"""

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class Attention(nn.Module):
    """Multi-head attention with bias-free q/k/v projections and PyTorch SDPA."""

    def __init__(self, query_dim: int, heads: int, context_dim: int | None = None, qkv_bias: bool = False,
                 dropout: float = 0.0):
        super().__init__()
        context_dim = context_dim or query_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, query_dim, bias=qkv_bias)
        self.to_k = nn.Linear(context_dim, query_dim, bias=qkv_bias)
        self.to_v = nn.Linear(context_dim, query_dim, bias=qkv_bias)
        self.to_out = nn.ModuleList([nn.Linear(query_dim, query_dim), nn.Dropout(dropout)])

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads)
                   for t in (self.to_q(x), self.to_k(context), self.to_v(context)))
        out = F.scaled_dot_product_attention(q, k, v)
        out = rearrange(out, "b h n d -> b n (h d)")
        return self.to_out[1](self.to_out[0](out))


class GEGLU(nn.Module):
    """Linear projection to two halves [a, g]; returns a * GELU(g) (exact GELU)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.proj(x).chunk(2, dim=-1)
        return a * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU feed-forward C -> 4C -> C (keys `net.0.proj`, `net.2`)."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, dim * mult), nn.Dropout(dropout), nn.Linear(dim * mult, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class BasicTransformerBlock(nn.Module):
    """Self-attention, optional audio cross-attention, feed-forward; each pre-norm + residual."""

    def __init__(self, dim: int, heads: int, cross_attention_dim: int, add_audio_layer: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads)
        self.add_audio_layer = add_audio_layer
        if add_audio_layer:
            self.norm2 = nn.LayerNorm(dim)
            self.attn2 = Attention(dim, heads, context_dim=cross_attention_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, audio: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        if self.add_audio_layer and audio is not None:
            x = x + self.attn2(self.norm2(x), audio)
        return x + self.ff(self.norm3(x))


class Transformer3DModel(nn.Module):
    """Spatial transformer applied to every frame: GN -> 1x1 conv -> block -> 1x1 conv -> +x."""

    def __init__(self, channels: int, heads: int, cross_attention_dim: int, norm_num_groups: int,
                 add_audio_layer: bool):
        super().__init__()
        self.norm = nn.GroupNorm(norm_num_groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, kernel_size=1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(channels, heads, cross_attention_dim, add_audio_layer)])
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor, audio: torch.Tensor | None) -> torch.Tensor:
        """x: [B, C, F, H, W]; audio: [B*F, tokens, D] (row b*F + f) or None."""
        frames, height = x.shape[2], x.shape[3]
        h = rearrange(x, "b c f h w -> (b f) c h w")
        residual = h
        h = self.proj_in(self.norm(h))
        h = rearrange(h, "n c h w -> n (h w) c")
        for block in self.transformer_blocks:
            h = block(h, audio)
        h = rearrange(h, "n (h w) c -> n c h w", h=height)
        h = self.proj_out(h) + residual
        return rearrange(h, "(b f) c h w -> b c f h w", f=frames)
