"""TREPA: temporal representation alignment between generated and ground-truth clips.

Both clips go through a frozen VideoMAE-v2 extractor; the loss is the mean squared distance
between their L2-normalised clip features (docs/training.md, step 6).
"""

import torch
import torch.nn.functional as F
from einops import rearrange

from latentsync.losses.videomae import VisionTransformer3D


class TREPALoss:
    """Callable `(pred, gt) -> scalar`; pred/gt are `[B, 3, T, H, W]` in [-1, 1].

    The extractor is put in eval mode and frozen; gradients flow to `pred` only.
    """

    def __init__(self, feature_extractor: VisionTransformer3D):
        self.extractor = feature_extractor.eval().requires_grad_(False)

    def _features(self, video: torch.Tensor) -> torch.Tensor:
        size = self.extractor.img_size
        frames = rearrange(video, "b c t h w -> (b t) c h w")
        if frames.shape[-2:] != (size, size):
            frames = F.interpolate(frames, size=(size, size), mode="bicubic",
                                   align_corners=False, antialias=False)
        frames = torch.clamp(frames / 2 + 0.5, 0, 1)
        clip = rearrange(frames, "(b t) c h w -> b c t h w", b=video.shape[0])
        dtype = self.extractor.patch_embed.proj.weight.dtype
        features = self.extractor.forward_features(clip.to(dtype))
        return F.normalize(features.float(), p=2, dim=-1)

    def __call__(self, pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        if pred.shape != gt.shape or pred.dim() != 5:
            raise ValueError(f"pred and gt must both be [B, 3, T, H, W]; got {tuple(pred.shape)} "
                             f"and {tuple(gt.shape)}")
        with torch.no_grad():
            gt_features = self._features(gt)
        return F.mse_loss(self._features(pred), gt_features)
