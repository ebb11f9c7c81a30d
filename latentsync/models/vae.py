"""The latent scale and shift of a VAE, read from its own config or measured on data.

A diffusion UNet works on `(z - shift) * scale`, where z is the VAE's latent: the scale brings
the latents to about unit variance, the shift (if any) to zero mean. Stable Diffusion's VAE says
`scaling_factor: 0.18215` (1 / the std of its latents on its training images) and has no shift;
a VAE trained here (scripts/train_vae.py) stores its own measured numbers in the same config
keys, so whoever encodes or decodes latents should take them from the VAE, not from a constant.
"""

from typing import Iterable, Mapping

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
