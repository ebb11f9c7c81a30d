"""The latent codec the UNet works in: VAE posterior samples, scaled and shifted by the VAE's own config.

A diffusion UNet works on `(z - shift) * scale`, where z is the VAE's latent: the scale brings
the latents to about unit variance, the shift (if any) to zero mean. Stable Diffusion's VAE says
`scaling_factor: 0.18215` (1 / the std of its latents on its training images) and has no shift;
a VAE trained here (scripts/train_vae.py) stores its own measured numbers in the same config
keys, so whoever encodes or decodes latents should take them from the VAE, not from a constant.

Inference (latentsync/pipelines/lipsync_pipeline.py) and UNet training (latentsync/training/
unet_step.py, with its latent cache) both encode with `posterior` + `sample_latents` and decode
with `decode_latents`, so the two sides cannot drift.
The posterior noise is drawn from the caller's generator, on the generator's device, in fp32.

Also here: `decode_rows`, a decode of only the lower latent rows (the mouth region the pipeline
regenerates), for `LipsyncOptions.decode_region = "mouth"`.
"""

from typing import Iterable, Mapping

import numpy as np
import torch

SD_SCALING_FACTOR = 0.18215  # Stable Diffusion's VAE (and diffusers' AutoencoderKL default)


def latent_scale_shift(vae) -> tuple[float, float]:
    """(scale, shift) of a diffusers VAE, of its `.config`, or of a config mapping:
    `scaling_factor`, and `shift_factor` or 0 when it is absent or null (SD's VAE has none)."""
    config = getattr(vae, "config", vae)
    get = config.get if isinstance(config, Mapping) else lambda key, default=None: getattr(config, key, default)
    scale = get("scaling_factor")
    if scale is None:
        raise ValueError("the VAE config has no scaling_factor")
    return float(scale), float(get("shift_factor", None) or 0.0)


def posterior(vae, pixels: torch.Tensor, batch: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) in fp32 of the VAE posterior of pixels `[N, 3, H, W]` in [-1, 1] (on the VAE's
    device and dtype), `[N, C, h, w]` each; encoded `batch` images at a time (None: all at once)."""
    parts = pixels.split(batch) if batch else (pixels,)
    moments = [vae.encode(part).latent_dist for part in parts]
    return torch.cat([m.mean for m in moments]).float(), torch.cat([m.std for m in moments]).float()


def sample_latents(vae, mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator | None,
                   groups: int = 1) -> torch.Tensor:
    """A posterior sample `mean + std * eps`, shifted and scaled for the UNet (`scaled_sample`).

    eps ~ N(0, 1) is drawn from `generator` on its device (the CPU without one), in fp32, one draw per
    group when the rows hold `groups` equal-size image sets (as separate calls would draw them).
    """
    device = generator.device if generator is not None else torch.device("cpu")
    eps = torch.cat([torch.randn(part.shape, generator=generator, device=device) for part in mean.chunk(groups)])
    return scaled_sample(vae, mean, std, eps)


def scaled_sample(vae, mean: torch.Tensor, std: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """`(mean + std * eps - shift) * scale`: the posterior sample for noise `eps`, as the UNet sees it."""
    scale, shift = latent_scale_shift(vae)
    return (mean + std * eps.to(mean.device) - shift) * scale


def decode_latents(vae, latents: torch.Tensor, first_row: int = 0, batch: int | None = None) -> torch.Tensor:
    """UNet latents `[N, C, h, w]` -> pixels `[N, 3, factor * (h - first_row), W]` in the VAE's dtype:
    the scale and shift undone, then `decode_rows` (first_row 0: the whole image), `batch` at a time."""
    scale, shift = latent_scale_shift(vae)
    unscaled = latents / scale + shift
    parts = unscaled.split(batch) if batch else (unscaled,)
    return torch.cat([decode_rows(vae, part.to(vae.dtype), first_row) for part in parts])


@torch.no_grad()
def measure_latent_stats(vae, batches: Iterable[torch.Tensor],
                         generator: torch.Generator | None = None) -> tuple[float, float]:
    """(mean, std) over every element of the posterior samples of `batches` (pixels `[N, 3, H, W]`
    in [-1, 1]), accumulated in float64 so the result does not depend on the batching. The latent
    scale of this VAE on that data is 1 / std, as Stable Diffusion measured its 0.18215."""
    total = total_sq = count = 0.0
    for pixels in batches:
        pixels = pixels.to(device=vae.device, dtype=vae.dtype)
        latents = vae.encode(pixels).latent_dist.sample(generator=generator).double()
        total += latents.sum().item()
        total_sq += latents.square().sum().item()
        count += latents.numel()
    if count < 2:
        raise ValueError("no latents to measure")
    mean = total / count
    variance = max(total_sq / count - mean * mean, 0.0) * count / (count - 1)
    return mean, variance ** 0.5


# -- decoding only the rows the inpainting mask regenerates -------------------------------------
# The lip-sync pipeline keeps source pixels wherever the mask is 1 (the upper face), so decoding the
# latent rows above the mouth region is wasted work. The decoder's convolutions see a few latent
# rows above each output row, and its mid-block self-attention sees every position, so a cropped
# decode differs a little from the full one; `margin` extra latent rows above the first needed row
# give the convolutions their context back. docs/benchmarks/speed.md measures the error per margin.
DECODE_MARGIN = 4  # latent rows decoded above the first generated row (chosen from benchmarks/speed.py)


def vae_scale_factor(vae) -> int:
    """Pixels per latent row (8 for SD's VAE): 2 per down block after the first."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def first_generated_row(mask, factor: int) -> int:
    """The first latent row that holds a pixel the mask regenerates (mask < 1; 1 = keep the source
    pixel) at `factor` pixels per latent row; 0 when the mask regenerates nothing (decode it all)."""
    rows = np.flatnonzero((np.asarray(mask) < 1).any(axis=-1))
    return int(rows[0]) // factor if len(rows) else 0


def decode_rows(vae, latents: torch.Tensor, first_row: int, margin: int = DECODE_MARGIN) -> torch.Tensor:
    """Decode the latent rows [first_row - margin, h) of VAE latents `[N, C, h, w]` (unscaled, as
    `vae.decode` takes them) and return the pixel rows [factor * first_row, factor * h): the lower
    part of the image, `[N, 3, factor * (h - first_row), factor * w]`. first_row 0 = `vae.decode`."""
    height = latents.shape[-2]
    if not 0 <= first_row < height or margin < 0:
        raise ValueError(f"first_row {first_row} must be in [0, {height}) and margin {margin} >= 0")
    start = max(first_row - margin, 0)
    pixels = vae.decode(latents[..., start:, :]).sample
    return pixels[..., (first_row - start) * vae_scale_factor(vae):, :]
