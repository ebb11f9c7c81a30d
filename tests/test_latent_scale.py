"""Latents are scaled and shifted by the VAE's own config (`scaling_factor`, `shift_factor`), in the
inference pipeline and in UNet training alike: a VAE trained here is not Stable Diffusion's 0.18215."""

import torch
from diffusers import AutoencoderKL, DDIMScheduler

from latentsync.models.vae import latent_scale_shift
from latentsync.pipelines.lipsync_pipeline import LipsyncPipeline
from latentsync.training.unet_step import vae_decode, vae_encode

TINY_VAE = dict(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4, latent_channels=4,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)


class _Unet(torch.nn.Module):
    """Just enough of a UNet for the pipeline's constructor and latent dtype."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.config = type("Config", (), {"cross_attention_dim": 8, "out_channels": 4})()

    @property
    def dtype(self):
        return torch.float32


def tiny_vae(**config) -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(**TINY_VAE, **config).eval()


def pipeline_latents(vae, pixels):
    pipe = LipsyncPipeline(vae=vae, unet=_Unet(), scheduler=DDIMScheduler(), resolution=32)
    with torch.no_grad():
        latents = pipe.encode(pixels, torch.Generator().manual_seed(1))
        return latents, pipe.decode(latents)


def test_scale_and_shift_come_from_the_vae_config():
    assert latent_scale_shift(tiny_vae()) == (0.18215, 0.0)  # diffusers' default = SD's VAE
    assert latent_scale_shift(tiny_vae(scaling_factor=0.3, shift_factor=0.1)) == (0.3, 0.1)
    assert latent_scale_shift({"scaling_factor": 0.5, "shift_factor": None}) == (0.5, 0.0)


def test_pipeline_encodes_and_decodes_with_the_vae_scale_and_shift():
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    sd, sd_frames = pipeline_latents(tiny_vae(), pixels)
    own, own_frames = pipeline_latents(tiny_vae(scaling_factor=0.5, shift_factor=0.25), pixels)
    # same weights and noise: z = sd / 0.18215, and own = (z - 0.25) * 0.5
    torch.testing.assert_close(own, (sd / 0.18215 - 0.25) * 0.5, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(own_frames, sd_frames, rtol=1e-4, atol=1e-4)  # decode undoes it


def test_training_encodes_and_decodes_with_the_vae_scale_and_shift():
    pixels = torch.rand(1, 2, 3, 32, 32) * 2 - 1
    sd = vae_encode(tiny_vae(), pixels, torch.Generator().manual_seed(1))
    own_vae = tiny_vae(scaling_factor=2.0, shift_factor=-0.5)
    own = vae_encode(own_vae, pixels, torch.Generator().manual_seed(1))
    torch.testing.assert_close(own, (sd / 0.18215 + 0.5) * 2.0, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(vae_decode(own_vae, own), vae_decode(tiny_vae(), sd), rtol=1e-4, atol=1e-4)


def test_posterior_noise_is_drawn_per_group_as_separate_calls_would():
    """sample_latents with groups=2 (the pipeline encodes masked and reference faces together) gives
    what one call per group gives, and the generator ends where two separate calls leave it."""
    from latentsync.models.vae import posterior, sample_latents

    vae = tiny_vae()
    pixels = torch.rand(4, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        mean, std = posterior(vae, pixels, batch=3)  # batching the encoder changes nothing
        whole_mean, whole_std = posterior(vae, pixels)
        torch.testing.assert_close((mean, std), (whole_mean, whole_std), rtol=1e-5, atol=1e-6)
        together, apart = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        both = sample_latents(vae, mean, std, together, groups=2)
        first = sample_latents(vae, mean[:2], std[:2], apart)
        second = sample_latents(vae, mean[2:], std[2:], apart)
    assert torch.equal(both, torch.cat([first, second]))
    assert torch.equal(torch.randn(3, generator=together), torch.randn(3, generator=apart))
    assert not torch.equal(first, second)
