"""VideoMAE-v2 ViT feature extractor (the frozen network behind the TREPA loss).

A plain pre-LN video ViT: a Conv3d tubelet embedding, a fixed sinusoidal position table,
`depth` transformer blocks and mean pooling followed by `fc_norm`. Parameter names follow the
official VideoMAE-v2 fine-tuned checkpoints (`vit_g_hybrid_pt_1200e_ssv2_ft.pth`), so those
files load strictly. Only `forward_features` is used by TREPA; the classification `head` exists
so that the checkpoint's keys all have a home.
"""

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from latentsync.checkpoints import checkpoint_file, default_path
from latentsync.errors import UserError
from latentsync.io import load_torch_file

VIDEOMAE_CHECKPOINT = str(default_path("videomae"))
VIDEOMAE_SOURCE = checkpoint_file("videomae").source()
LAYER_NORM_EPS = 1e-6
POSITION_BASE = 10000.0
WEIGHT_INIT_STD = 0.02


def sinusoid_table(num_positions: int, dim: int) -> torch.Tensor:
    """`[1, num_positions, dim]` table: pos / 10000^(2*(j//2)/dim), sin on even j, cos on odd j."""
    positions = torch.arange(num_positions, dtype=torch.float64)[:, None]
    pair_index = torch.div(torch.arange(dim), 2, rounding_mode="floor").to(torch.float64)
    angles = positions / torch.pow(POSITION_BASE, 2.0 * pair_index / dim)[None, :]
    table = torch.empty_like(angles)
    table[:, 0::2] = torch.sin(angles[:, 0::2])
    table[:, 1::2] = torch.cos(angles[:, 1::2])
    return table.to(torch.float32)[None]


class TubeletEmbed(nn.Module):
    """Cuts `[B, 3, T, H, W]` into tubelets and projects each to one token: `[B, N, dim]`."""

    def __init__(self, img_size: int, patch_size: int, tubelet_size: int, in_chans: int, dim: int):
        super().__init__()
        self.img_size = img_size
        kernel = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(in_chans, dim, kernel_size=kernel, stride=kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"expected frames of {self.img_size}x{self.img_size}, got {tuple(x.shape[-2:])}")
        return self.proj(x).flatten(2).transpose(1, 2)


class SelfAttention(nn.Module):
    """Multi-head self-attention whose qkv projection has q and v biases but no k bias."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias)
        q, k, v = qkv.view(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # scale = head_dim ** -0.5
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class FeedForward(nn.Module):
    """Linear -> GELU -> Linear."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-LN transformer block (no layer scale; drop-path is inactive at eval and omitted)."""

    def __init__(self, dim: int, num_heads: int, hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = SelfAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = FeedForward(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer3D(nn.Module):
    """VideoMAE-v2 style video ViT with mean pooling; `forward_features` gives `[B, embed_dim]`."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, tubelet_size: int = 2,
                 num_frames: int = 16, in_chans: int = 3, num_classes: int = 400,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 mlp_ratio: float = 4.0, use_mean_pooling: bool = True,
                 gradient_checkpointing: bool = False):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        if not use_mean_pooling:
            raise NotImplementedError("only mean pooling + fc_norm (the VideoMAE-v2 fine-tune layout)")
        self.img_size = img_size
        self.num_frames = num_frames
        self.embed_dim = embed_dim
        self.gradient_checkpointing = gradient_checkpointing
        num_tokens = (num_frames // tubelet_size) * (img_size // patch_size) ** 2
        hidden = int(round(embed_dim * mlp_ratio))
        self.patch_embed = TubeletEmbed(img_size, patch_size, tubelet_size, in_chans, embed_dim)
        self.register_buffer("pos_embed", sinusoid_table(num_tokens, embed_dim), persistent=False)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, hidden) for _ in range(depth))
        self.fc_norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)
        self.head = nn.Linear(embed_dim, num_classes)
        self.apply(_init_weights)

    def reset_position_table(self) -> None:
        """Recompute the fixed position table (needed after building on the meta device)."""
        tokens, dim = self.pos_embed.shape[1:]
        device = self.patch_embed.proj.weight.device
        self.pos_embed = sinusoid_table(tokens, dim).to(device)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled, normalised clip feature of `[B, 3, T, H, W]` frames: `[B, embed_dim]`."""
        x = self.patch_embed(x)
        x = x + self.pos_embed.to(x.dtype)
        for block in self.blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.fc_norm(x.mean(dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (unused by TREPA)."""
        return self.head(self.forward_features(x))


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=WEIGHT_INIT_STD, a=-2 * WEIGHT_INIT_STD,
                              b=2 * WEIGHT_INIT_STD)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def vit_giant_patch14_224(**overrides) -> VisionTransformer3D:
    """ViT-g/14 of `vit_g_hybrid_pt_1200e_ssv2_ft.pth`: 1408 wide, 40 blocks, 16 frames, 174 classes."""
    options = dict(img_size=224, patch_size=14, tubelet_size=2, num_frames=16, num_classes=174,
                   embed_dim=1408, depth=40, num_heads=16, mlp_ratio=48 / 11, use_mean_pooling=True)
    options.update(overrides)
    return VisionTransformer3D(**options)


def _read_state_dict(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"{path}: VideoMAE-v2 checkpoint not found (the TREPA loss needs "
                        f"{VIDEOMAE_CHECKPOINT}; get it from {VIDEOMAE_SOURCE})")
    data = load_torch_file(path, "VideoMAE-v2 checkpoint", mmap=True)  # 4 GB for ViT-g: mapped
    if isinstance(data, dict):
        for key in ("model", "module"):
            if isinstance(data.get(key), dict):
                return data[key]
        if "patch_embed.proj.weight" in data:
            return data
    raise UserError(f"{path}: no VideoMAE-v2 weights (expected a dict with key 'model' or 'module')")


def _check_keys(path: Path, model: nn.Module, state_dict: dict) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        raise UserError(f"{path}: weights do not match the VideoMAE-v2 model: "
                        f"{len(missing)} missing (first: {missing[:3]}), "
                        f"{len(unexpected)} unexpected (first: {unexpected[:3]})")
    for key, value in expected.items():
        if tuple(state_dict[key].shape) != tuple(value.shape):
            raise UserError(f"{path}: {key} has shape {tuple(state_dict[key].shape)}, "
                            f"the model expects {tuple(value.shape)}")


def load_videomae(path: str | Path = VIDEOMAE_CHECKPOINT, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32,
                  model: VisionTransformer3D | None = None) -> VisionTransformer3D:
    """Frozen, eval-mode VideoMAE-v2 extractor loaded strictly from `path`.

    By default the ViT-g/14 is built on the meta device and takes the checkpoint's tensors
    directly (no second copy in memory); pass `model` to load into another architecture.
    """
    path = Path(path)
    state_dict = _read_state_dict(path)
    if model is None:
        with torch.device("meta"):
            model = vit_giant_patch14_224()
    _check_keys(path, model, state_dict)
    on_meta = model.patch_embed.proj.weight.is_meta
    model.load_state_dict(state_dict, strict=True, assign=on_meta)
    if on_meta:
        model.reset_position_table()
    model = model.to(device=device, dtype=dtype)
    return model.eval().requires_grad_(False)


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters (works on meta-device models)."""
    return sum(math.prod(p.shape) for p in model.parameters())
