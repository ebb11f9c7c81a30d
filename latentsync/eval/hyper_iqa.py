"""Blind image quality with hyperIQA (Su et al., CVPR 2020), as used by data stage 8 (see docs/evaluation.md).

The published model `HyperNet(16, 112, 224, 112, 56, 28, 14, 7)`:

* a ResNet-50 backbone whose stages 1-3 feed "local distortion aware" (LDA) branches (1x1
  conv, 7x7 average pooling, linear layer) and whose last stage is pooled into a fourth
  branch; the four vectors are concatenated into the 224-d input of a small "target" net;
* a hyper network that turns the last ResNet feature map (7x7) into the weights and biases of
  that target net *per image*: four fully connected layers 224 -> 112 -> 56 -> 28 -> 14, each
  followed by a sigmoid, and a linear output 14 -> 1, the quality score (about 0-100, KonIQ
  scale, higher is better).

The parameter names follow the public `koniq_pretrained.pkl` (a plain state dict: `res.*`
backbone + LDA layers, `conv1.*`, `fc{1..4}w_conv`, `fc{1..4}b_fc`, `fc5w_fc`, `fc5b_fc`),
which loads strictly. Unlike the reference, the backbone is built without downloading the
ImageNet ResNet-50 weights (the KonIQ file overwrites every one of them anyway; docs/reference-differences.md item 6).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from latentsync.checkpoints import checkpoint_file, default_path
from latentsync.errors import UserError
from latentsync.eval.weights import load_weights_strictly

HYPER_IQA_PATH = str(default_path("hyper_iqa"))
HYPER_IQA_SOURCE = f"{checkpoint_file('hyper_iqa').source()} (the hyperIQA authors' KonIQ-10k model)"

# HyperNet(16, 112, 224, 112, 56, 28, 14, 7) of the paper / LatentSync
LDA_OUT_CHANNELS = 16
HYPER_IN_CHANNELS = 112
TARGET_IN_SIZE = 224
TARGET_FC_SIZES = (112, 56, 28, 14)
FEATURE_SIZE = 7
INPUT_SIZE = 224  # centre crop fed to the network
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LDA_POOL = 7  # the LDA branches average-pool 7x7 windows


class LdaResNet50(nn.Module):
    """ResNet-50 trunk (torchvision layout, no classifier) with the four LDA branches.

    Expects 224x224 inputs (the LDA linear layers are sized for 56/28/14/7 feature maps).
    Returns (last feature map [B, 2048, 7, 7], target-net input vector [B, target_in_size]).
    """

    def __init__(self, lda_out_channels: int = LDA_OUT_CHANNELS,
                 target_in_size: int = TARGET_IN_SIZE):
        super().__init__()
        base = torchvision.models.resnet50(weights=None)  # never downloads anything
        self.conv1, self.bn1, self.relu, self.maxpool = base.conv1, base.bn1, base.relu, base.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (base.layer1, base.layer2,
                                                              base.layer3, base.layer4)
        self.lda1_pool = _lda_pool(256, 16)
        self.lda1_fc = nn.Linear(16 * 8 * 8, lda_out_channels)
        self.lda2_pool = _lda_pool(512, 32)
        self.lda2_fc = nn.Linear(32 * 4 * 4, lda_out_channels)
        self.lda3_pool = _lda_pool(1024, 64)
        self.lda3_fc = nn.Linear(64 * 2 * 2, lda_out_channels)
        self.lda4_pool = nn.AvgPool2d(LDA_POOL, stride=LDA_POOL)
        self.lda4_fc = nn.Linear(2048, target_in_size - 3 * lda_out_channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        lda1 = self.lda1_fc(self.lda1_pool(x).flatten(1))
        x = self.layer2(x)
        lda2 = self.lda2_fc(self.lda2_pool(x).flatten(1))
        x = self.layer3(x)
        lda3 = self.lda3_fc(self.lda3_pool(x).flatten(1))
        x = self.layer4(x)
        lda4 = self.lda4_fc(self.lda4_pool(x).flatten(1))
        return x, torch.cat([lda1, lda2, lda3, lda4], dim=1)


def _lda_pool(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False),
                         nn.AvgPool2d(LDA_POOL, stride=LDA_POOL))


class HyperNet(nn.Module):
    """hyperIQA: backbone + hyper network; `forward` returns one quality score per image.

    `target_params(images)` exposes the generated per-image target-net weights.
    """

    def __init__(self, lda_out_channels: int = LDA_OUT_CHANNELS,
                 hyper_in_channels: int = HYPER_IN_CHANNELS,
                 target_in_size: int = TARGET_IN_SIZE,
                 target_fc_sizes: tuple[int, int, int, int] = TARGET_FC_SIZES,
                 feature_size: int = FEATURE_SIZE):
        super().__init__()
        self.hyper_in_channels = hyper_in_channels
        self.target_in_size = target_in_size
        self.fc_sizes = tuple(target_fc_sizes)
        self.feature_size = feature_size
        self.res = LdaResNet50(lda_out_channels, target_in_size)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv1 = nn.Sequential(
            nn.Conv2d(2048, 1024, 1), nn.ReLU(inplace=True),
            nn.Conv2d(1024, 512, 1), nn.ReLU(inplace=True),
            nn.Conv2d(512, hyper_in_channels, 1), nn.ReLU(inplace=True),
        )
        sizes = (target_in_size,) + self.fc_sizes
        cells = feature_size ** 2
        for i in range(4):  # weights come from a 3x3 conv over the 7x7 map, biases from a linear
            fan_in, fan_out = sizes[i], sizes[i + 1]
            if (fan_in * fan_out) % cells:
                raise ValueError(f"target layer {i + 1}: {fan_in}x{fan_out} weights are not "
                                 f"divisible by feature_size^2 = {cells}")
            setattr(self, f"fc{i + 1}w_conv",
                    nn.Conv2d(hyper_in_channels, fan_in * fan_out // cells, 3, padding=1))
            setattr(self, f"fc{i + 1}b_fc", nn.Linear(hyper_in_channels, fan_out))
        self.fc5w_fc = nn.Linear(hyper_in_channels, self.fc_sizes[-1])
        self.fc5b_fc = nn.Linear(hyper_in_channels, 1)

    def target_params(self, images: torch.Tensor) -> tuple[torch.Tensor, list]:
        """(target input [B, in], [(weight [B, out, in], bias [B, out]) for the 5 layers])."""
        features, vector = self.res(images)
        batch = images.shape[0]
        hyper = self.conv1(features)
        if hyper.shape[-2:] != (self.feature_size, self.feature_size):
            raise ValueError(f"expected {INPUT_SIZE}x{INPUT_SIZE} inputs "
                             f"(got {list(images.shape[-2:])})")
        pooled = self.pool(hyper).flatten(1)
        sizes = (self.target_in_size,) + self.fc_sizes
        layers = []
        for i in range(4):
            weight = getattr(self, f"fc{i + 1}w_conv")(hyper).reshape(batch, sizes[i + 1], sizes[i])
            bias = getattr(self, f"fc{i + 1}b_fc")(pooled)
            layers.append((weight, bias))
        layers.append((self.fc5w_fc(pooled).reshape(batch, 1, sizes[-1]), self.fc5b_fc(pooled)))
        return vector, layers

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised [B, 3, 224, 224] images -> [B] quality scores (higher is better)."""
        vector, layers = self.target_params(images)
        return target_net(vector, layers)


def target_net(vector: torch.Tensor, layers: list) -> torch.Tensor:
    """Run each image's own fully connected net: sigmoid after layers 1-4, linear last. -> [B]"""
    x = vector.unsqueeze(2)
    for i, (weight, bias) in enumerate(layers):
        x = torch.baddbmm(bias.unsqueeze(2), weight, x)
        if i < len(layers) - 1:
            x = torch.sigmoid(x)
    return x[:, 0, 0]


def load_hyper_iqa(path: str | os.PathLike = HYPER_IQA_PATH, device="cpu") -> HyperNet:
    """HyperNet in eval mode with the weights of `path` (the KonIQ state dict), loaded strictly."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: hyperIQA checkpoint not found; get it from {HYPER_IQA_SOURCE}")
    return load_weights_strictly(HyperNet(), path, device, "hyperIQA HyperNet", wrapper_key="model")


def preprocess(frames: np.ndarray) -> torch.Tensor:
    """uint8 RGB [n, H, W, 3] -> [n, 3, 224, 224]: /255, centre crop 224, ImageNet normalisation.

    Frames smaller than 224 on a side are first resized (bilinear) so the short side is 224.
    """
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames [n, H, W, 3], got {list(frames.shape)}")
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0
    height, width = x.shape[-2:]
    if min(height, width) < INPUT_SIZE:
        scale = INPUT_SIZE / min(height, width)
        size = (max(INPUT_SIZE, round(height * scale)), max(INPUT_SIZE, round(width * scale)))
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        height, width = size
    top, left = (height - INPUT_SIZE) // 2, (width - INPUT_SIZE) // 2
    x = x[:, :, top:top + INPUT_SIZE, left:left + INPUT_SIZE]
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def score_frames(model: HyperNet, frames: np.ndarray, device=None) -> np.ndarray:
    """Quality score of each uint8 RGB frame `[n, H, W, 3]` -> float64 [n]."""
    device = device or next(model.parameters()).device
    scores = model(preprocess(frames).to(device))
    return scores.double().cpu().numpy()


def quality_frame_indices(num_frames: int) -> list[int]:
    """The frames scored per clip: first, middle (n // 2) and last."""
    if num_frames < 1:
        raise ValueError("a clip needs at least one frame")
    return [0, num_frames // 2, num_frames - 1]


def video_quality(model: HyperNet, path: str | os.PathLike, device=None) -> float:
    """Mean hyperIQA score of the first, middle and last frame of the video at `path`."""
    from latentsync.video import count_frames, iter_frames

    wanted = quality_frame_indices(count_frames(path, fps=None))
    picked, index = {}, 0
    for chunk in iter_frames(path, fps=None):  # keeps only the three frames it needs
        for frame in chunk:
            if index in wanted:
                picked[index] = frame
            index += 1
    if any(i not in picked for i in wanted):
        raise UserError(f"{path}: could not decode frames {wanted} ({index} decoded)")
    frames = np.stack([picked[i] for i in wanted])
    return float(score_frames(model, frames, device).mean())
