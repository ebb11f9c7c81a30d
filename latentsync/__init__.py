"""LatentSync re-implementation: audio-conditioned latent diffusion lip sync."""

__version__ = "0.1.0"
