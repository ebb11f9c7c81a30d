"""Training noise and the one-step clean-latent estimate (docs/training.md, steps 2 and 6)."""

import math

import torch


def mixed_noise(shape: tuple[int, ...], alpha: float = 1.0,
                generator: torch.Generator | None = None,
                device: torch.device | str | None = None,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Unit-variance noise `[B, C, F, H, W]` whose frames share a common component.

    noise = eps1[:, :, :1] (repeated over F) * sqrt(a^2/(1+a^2)) + eps2 * sqrt(1/(1+a^2));
    eps1 is drawn before eps2 (both full tensors). Frame-to-frame correlation is a^2/(1+a^2).
    """
    if len(shape) != 5:
        raise ValueError(f"expected a [B, C, F, H, W] shape, got {tuple(shape)}")
    if device is None:
        device = generator.device if generator is not None else "cpu"
    eps1 = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    eps2 = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    shared = eps1[:, :, :1].expand(shape) * math.sqrt(alpha**2 / (1 + alpha**2))
    independent = eps2 * math.sqrt(1 / (1 + alpha**2))
    return shared + independent


def one_step_x0(x_t: torch.Tensor, eps_hat: torch.Tensor, alphas_cumprod: torch.Tensor,
                timesteps: torch.Tensor, prediction_type: str = "epsilon") -> torch.Tensor:
    """The clean latent implied by the UNet's output `eps_hat` (abar in its dtype):
    epsilon: (x_t - sqrt(1 - abar_t) * eps_hat) / sqrt(abar_t); sample: the output itself;
    v_prediction: sqrt(abar_t) * x_t - sqrt(1 - abar_t) * v_hat."""
    if prediction_type == "sample":
        return eps_hat
    abar = alphas_cumprod.to(eps_hat.device)[timesteps.to(eps_hat.device)].to(eps_hat.dtype)
    abar = abar.reshape(-1, *([1] * (eps_hat.dim() - 1)))
    if prediction_type == "v_prediction":
        return abar.sqrt() * x_t - (1 - abar).sqrt() * eps_hat
    return (x_t - (1 - abar).sqrt() * eps_hat) / abar.sqrt()


def prediction_target(noise: torch.Tensor, x0: torch.Tensor, abar: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """What the UNet is trained to output: the noise, the clean latent `x0`, or
    v = sqrt(abar) * noise - sqrt(1 - abar) * x0 (abar broadcast to the latents)."""
    if prediction_type == "sample":
        return x0
    if prediction_type == "v_prediction":
        return abar.sqrt() * noise - (1 - abar).sqrt() * x0
    return noise
