"""StableSyncNet: the audio-visual sync discriminator of LatentSync (see docs/architecture.md).

Two `DownEncoder2D` towers, one for a stack of face frames (pixels or VAE latents) and one for
the matching mel-spectrogram window, each map their input to a non-negative unit vector. The
cosine of the two vectors is the sync probability: trained with binary cross-entropy against
"in sync" (1) / "off sync" (0) and used as the SyncNet loss of UNet training.

State-dict names and shapes match the reference checkpoints (`stable_syncnet.pt` of 1.5/1.6 with
`configs/syncnet/syncnet_16_pixel_attn.yaml`, `latentsync_syncnet.pt` of 1.0 with
`syncnet_16_pixel.yaml`).
"""

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from latentsync.errors import UserError
from latentsync.models.attention import Attention, FeedForward

NORM_GROUPS = 32
GROUP_NORM_EPS = 1e-6
ATTENTION_HEADS = 8
SYNC_THRESHOLD = 0.5  # cosine above this = "in sync"
ENCODER_KEYS = ("in_channels", "block_out_channels", "downsample_factors", "attn_blocks", "dropout", "norm_num_groups")
REQUIRED_ENCODER_KEYS = ("in_channels", "block_out_channels", "downsample_factors")


def downsample_padding(factor: int | tuple[int, int]) -> tuple[int, int, int, int] | None:
    """Zero padding (W-left, W-right, H-top, H-bottom) applied before a stride-`factor` 3x3 conv.

    None for factor 1 (no downsampling). A pair is (height stride, width stride); the side with
    stride 1 gets symmetric padding so its size is kept.
    """
    if isinstance(factor, int):
        return None if factor == 1 else (0, 1, 0, 1)
    height, width = factor
    if height == 1:
        return (0, 1, 1, 1)
    if width == 1:
        return (1, 1, 0, 1)
    return (0, 1, 0, 1)


class ResnetBlock2D(nn.Module):
    """Pre-norm residual block, optionally followed by a padded strided 3x3 downsampling conv."""

    def __init__(self, in_channels: int, out_channels: int, factor: int | tuple[int, int] = 1,
                 dropout: float = 0.0, groups: int = NORM_GROUPS):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=GROUP_NORM_EPS)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=GROUP_NORM_EPS)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        self.padding = downsample_padding(factor)
        if self.padding is not None:
            self.downsample_conv = nn.Conv2d(out_channels, out_channels, 3, stride=factor, padding=0)
        else:
            self.downsample_conv = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
        x = shortcut + h
        if self.downsample_conv is not None:
            x = self.downsample_conv(F.pad(x, self.padding))
        return x


class AttentionBlock2D(nn.Module):
    """Transformer block on a feature map: GN, 1x1 conv in, self-attention, GEGLU, 1x1 conv out, residual."""

    def __init__(self, channels: int, dropout: float = 0.0, groups: int = NORM_GROUPS):
        super().__init__()
        # Registration order fixes the state-dict order of the reference checkpoints.
        self.norm1 = nn.GroupNorm(groups, channels, eps=GROUP_NORM_EPS)
        self.norm2 = nn.LayerNorm(channels)
        self.norm3 = nn.LayerNorm(channels)
        self.ff = FeedForward(channels, dropout=dropout)
        self.conv_in = nn.Conv2d(channels, channels, 1)
        self.conv_out = nn.Conv2d(channels, channels, 1)
        self.attn = Attention(channels, ATTENTION_HEADS, qkv_bias=True, dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        h = self.conv_in(self.norm1(x))
        h = h.permute(0, 2, 3, 1).reshape(batch, height * width, channels)
        h = h + self.attn(self.norm2(h))
        h = h + self.ff(self.norm3(h))
        h = h.reshape(batch, height, width, channels).permute(0, 3, 1, 2)
        return self.conv_out(h) + x


def encoder_options(options: Mapping[str, Any], name: str) -> dict[str, Any]:
    """Validate one encoder's config section; fill the defaults (no attention, dropout 0)."""
    if not isinstance(options, Mapping):
        raise UserError(f"model.{name}: expected a mapping of encoder options, got {type(options).__name__}")
    unknown = sorted(set(options) - set(ENCODER_KEYS))
    if unknown:
        raise UserError(f"model.{name}: unknown option(s) {', '.join(unknown)}")
    missing = [key for key in REQUIRED_ENCODER_KEYS if key not in options]
    if missing:
        raise UserError(f"model.{name}: missing option(s) {', '.join(missing)}")
    channels = [int(c) for c in options["block_out_channels"]]
    factors = [normalise_factor(f, name) for f in options["downsample_factors"]]
    attn = options.get("attn_blocks")
    attn = [0] * len(channels) if attn is None else [int(a) for a in attn]
    if not (len(channels) == len(factors) == len(attn)) or not channels:
        raise UserError(
            f"model.{name}: block_out_channels, downsample_factors and attn_blocks need the same non-zero "
            f"length (got {len(channels)}, {len(factors)}, {len(attn)})"
        )
    if any(a not in (0, 1) for a in attn):
        raise UserError(f"model.{name}.attn_blocks: entries must be 0 or 1, got {attn}")
    return {
        "in_channels": int(options["in_channels"]),
        "block_out_channels": channels,
        "downsample_factors": factors,
        "attn_blocks": attn,
        "dropout": float(options.get("dropout", 0.0)),
        "norm_num_groups": int(options.get("norm_num_groups", NORM_GROUPS)),
    }


def normalise_factor(factor: Any, name: str) -> int | tuple[int, int]:
    """A downsample factor as an int or a (height, width) pair of ints >= 1."""
    if isinstance(factor, Sequence) and not isinstance(factor, str):
        pair = tuple(int(f) for f in factor)
        if len(pair) != 2 or min(pair) < 1 or pair == (1, 1):
            raise UserError(f"model.{name}.downsample_factors: {list(factor)} must be two ints >= 1, not both 1")
        return pair
    if int(factor) < 1:
        raise UserError(f"model.{name}.downsample_factors: {factor} must be >= 1")
    return int(factor)


class DownEncoder2D(nn.Module):
    """conv_in -> resnet (+ attention) stages -> GroupNorm -> ReLU -> flattened unit vector."""

    def __init__(self, in_channels: int, block_out_channels: Sequence[int],
                 downsample_factors: Sequence[int | tuple[int, int]], attn_blocks: Sequence[int],
                 dropout: float = 0.0, norm_num_groups: int = NORM_GROUPS):
        super().__init__()
        self.gradient_checkpointing = False
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        previous = block_out_channels[0]
        for channels, factor, attn in zip(block_out_channels, downsample_factors, attn_blocks):
            self.down_blocks.append(ResnetBlock2D(previous, channels, factor, dropout, norm_num_groups))
            if attn:
                self.down_blocks.append(AttentionBlock2D(channels, dropout, norm_num_groups))
            previous = channels
        self.norm_out = nn.GroupNorm(norm_num_groups, previous, eps=GROUP_NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        checkpointing = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.down_blocks:
            if checkpointing:
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        x = F.relu(self.norm_out(x))
        return F.normalize(x.reshape(x.shape[0], -1), p=2, dim=1)


def plain_container(value: Any) -> Any:
    """An OmegaConf DictConfig/ListConfig as plain dicts and lists; anything else unchanged."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # omegaconf is optional for this module
        return value
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


class StableSyncNet(ModelMixin, ConfigMixin):
    """Audio and visual encoders whose embeddings' cosine similarity scores lip sync.

    Build from the `model:` section of a `configs/syncnet/*.yaml` file, with
    `StableSyncNet.from_config(section)` or `StableSyncNet(**section)`.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(self, audio_encoder: dict, visual_encoder: dict):
        super().__init__()
        audio = encoder_options(plain_container(audio_encoder), "audio_encoder")
        visual = encoder_options(plain_container(visual_encoder), "visual_encoder")
        # Keep the config JSON-serialisable even when the caller passed OmegaConf nodes.
        self.register_to_config(audio_encoder=plain_container(audio_encoder),
                                visual_encoder=plain_container(visual_encoder))
        self.audio_encoder = DownEncoder2D(**audio)
        self.visual_encoder = DownEncoder2D(**visual)

    def __getattr__(self, name: str) -> Any:
        # The encoders share their names with config entries, which diffusers' __getattr__ would
        # return instead (with a deprecation warning): submodules win.
        modules = self.__dict__.get("_modules", {})
        if name in modules:
            return modules[name]
        return super().__getattr__(name)

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """diffusers' from_config, also accepting an OmegaConf DictConfig."""
        return super().from_config(plain_container(config), return_unused_kwargs=return_unused_kwargs, **kwargs)

    @property
    def gradient_checkpointing(self) -> bool:
        """True if the encoders recompute each down block's activations in the backward pass."""
        return self.audio_encoder.gradient_checkpointing or self.visual_encoder.gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, enable: bool) -> None:
        self.audio_encoder.gradient_checkpointing = bool(enable)
        self.visual_encoder.gradient_checkpointing = bool(enable)

    def forward(self, image_sequences: torch.Tensor, audio_sequences: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed frames [B, F*C, H, W] and mel windows [B, 1, 80, T]; returns (vision, audio) unit vectors."""
        vision_embeds = self.visual_encoder(image_sequences)
        audio_embeds = self.audio_encoder(audio_sequences)
        return vision_embeds, audio_embeds


def cosine_similarity(vision_embeds: torch.Tensor, audio_embeds: torch.Tensor) -> torch.Tensor:
    """Per-sample cosine of the two embeddings in fp32; in [0, 1] for StableSyncNet outputs."""
    return F.cosine_similarity(vision_embeds.float(), audio_embeds.float(), dim=1)


def sync_loss(vision_embeds: torch.Tensor, audio_embeds: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of the cosine similarity against targets (1 = in sync, 0 = off sync)."""
    similarity = cosine_similarity(vision_embeds, audio_embeds).clamp(0.0, 1.0)  # rounding can exceed 1
    targets = targets.to(device=similarity.device, dtype=torch.float32).reshape(similarity.shape)
    return F.binary_cross_entropy(similarity, targets)


def contrastive_sync_loss(vision_embeds: torch.Tensor, audio_embeds: torch.Tensor, targets: torch.Tensor,
                          temperature: float = 0.1) -> torch.Tensor:
    """InfoNCE over the batch, both ways: every in-sync sample's frames must pick their own mel
    window among all the batch's windows, and its window its own frames among all the batch's
    frame stacks (the off-sync samples' frames, from the same clip at another time, are the hard
    negatives). Zero for a batch without in-sync samples.

    Binary cross-entropy alone compares one pair at a time, and its trivial solution (the same
    embedding for every input, cosine 0.5, loss ln 2) is where small-data runs get stuck; with
    many negatives per sample a constant embedding scores ln(batch) instead (docs/training.md).
    """
    positive = targets.reshape(-1) > SYNC_THRESHOLD
    if not bool(positive.any()):
        return vision_embeds.sum() * 0.0
    logits = vision_embeds.float() @ audio_embeds.float().T / temperature  # [B, B]
    own = torch.arange(logits.shape[0], device=logits.device)[positive]
    return 0.5 * (F.cross_entropy(logits[positive], own) + F.cross_entropy(logits.T[positive], own))


def sync_accuracy(vision_embeds: torch.Tensor, audio_embeds: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fraction of samples whose prediction (in sync iff cosine > 0.5) matches the target."""
    predicted = cosine_similarity(vision_embeds, audio_embeds) > SYNC_THRESHOLD
    targets = targets.to(predicted.device).reshape(predicted.shape) > SYNC_THRESHOLD
    return (predicted == targets).float().mean()
