"""Down, mid and up blocks of the LatentSync UNet (see docs/architecture.md).

Every layer of a block is resnet -> spatial transformer (cross-attention blocks only) ->
motion module (when enabled); down blocks push a skip after each layer and after the
downsampler, up blocks pop one skip per layer.
"""

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from latentsync.models.attention import Transformer3DModel
from latentsync.models.motion_module import VanillaTemporalModule
from latentsync.models.resnet import Downsample3D, ResnetBlock3D, Upsample3D


class LayerStack(nn.Module):
    """Resnets with optional spatial transformers and motion modules, one of each per layer."""

    def __init__(self, in_channels: list[int], out_channels: int, temb_channels: int, groups: int, eps: float,
                 heads: int, cross_attention_dim: int, with_attention: bool, add_audio_layer: bool,
                 motion_kwargs: dict | None, output_scale_factor: float = 1.0):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock3D(c, out_channels, temb_channels, groups, eps, output_scale_factor)
                                      for c in in_channels])
        if with_attention:
            self.attentions = nn.ModuleList([
                Transformer3DModel(out_channels, heads, cross_attention_dim, groups, add_audio_layer)
                for _ in in_channels])
        else:
            self.attentions = None
        if motion_kwargs is not None:
            self.motion_modules = nn.ModuleList([VanillaTemporalModule(out_channels, **motion_kwargs)
                                                 for _ in in_channels])
        else:
            self.motion_modules = None
        self.gradient_checkpointing = False

    def _call(self, module: nn.Module, *args):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(module, *args, use_reentrant=False)
        return module(*args)

    def run_layer(self, i: int, h: torch.Tensor, temb: torch.Tensor, audio: torch.Tensor | None) -> torch.Tensor:
        h = self._call(self.resnets[i], h, temb)
        if self.attentions is not None:
            h = self._call(self.attentions[i], h, audio)
        if self.motion_modules is not None:
            h = self._call(self.motion_modules[i], h)
        return h


class DownBlock3D(LayerStack):
    """`DownBlock3D` / `CrossAttnDownBlock3D`: layers, then an optional stride-2 downsampler."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, add_downsample: bool,
                 downsample_padding: int, **kwargs):
        super().__init__([in_channels] + [out_channels] * (num_layers - 1), out_channels, **kwargs)
        self.downsamplers = nn.ModuleList([Downsample3D(out_channels, downsample_padding)]) if add_downsample else None

    def forward(self, h, temb, audio):
        skips = []
        for i in range(len(self.resnets)):
            h = self.run_layer(i, h, temb, audio)
            skips.append(h)
        if self.downsamplers is not None:
            h = self.downsamplers[0](h)
            skips.append(h)
        return h, skips


class UpBlock3D(LayerStack):
    """`UpBlock3D` / `CrossAttnUpBlock3D`: concat a skip before every layer, then upsample."""

    def __init__(self, in_channels: int, prev_output_channels: int, out_channels: int, num_layers: int,
                 add_upsample: bool, **kwargs):
        skip_channels = [out_channels] * (num_layers - 1) + [in_channels]
        resnet_in = [prev_output_channels] + [out_channels] * (num_layers - 1)
        super().__init__([r + s for r, s in zip(resnet_in, skip_channels)], out_channels, **kwargs)
        self.upsamplers = nn.ModuleList([Upsample3D(out_channels)]) if add_upsample else None

    def forward(self, h, skips: list, temb, audio, first_layer: int = 0):
        """Runs layers `first_layer..`, popping one skip from the end of `skips` per layer, then
        upsamples to the size of the next skip (so odd latent sizes round-trip)."""
        for i in range(first_layer, len(self.resnets)):
            h = torch.cat([h, skips.pop()], dim=1)
            h = self.run_layer(i, h, temb, audio)
        if self.upsamplers is not None:
            h = self.upsamplers[0](h, tuple(skips[-1].shape[-2:]) if skips else None)
        return h

    def partial(self, h, skips: list, temb, audio):
        """All layers but the last, no upsampling: the features DeepCache stores."""
        for i in range(len(self.resnets) - 1):
            h = torch.cat([h, skips.pop()], dim=1)
            h = self.run_layer(i, h, temb, audio)
        return h


class UNetMidBlock3DCrossAttn(nn.Module):
    """resnet -> transformer -> resnet (never a motion module)."""

    def __init__(self, channels: int, temb_channels: int, groups: int, eps: float, heads: int,
                 cross_attention_dim: int, add_audio_layer: bool, output_scale_factor: float):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock3D(channels, channels, temb_channels, groups, eps, output_scale_factor)
                                      for _ in range(2)])
        self.attentions = nn.ModuleList(
            [Transformer3DModel(channels, heads, cross_attention_dim, groups, add_audio_layer)])

    def forward(self, h, temb, audio):
        h = self.resnets[0](h, temb)
        h = self.attentions[0](h, audio)
        return self.resnets[1](h, temb)
