"""One UNet training step: VAE latents -> mixed noise -> UNet -> noise-prediction loss -> one-step
x0 estimate decoded to pixels -> LPIPS, SyncNet and TREPA losses, weighted by the `run:` settings.

`training_step` is the whole step; the rest are its pieces. The random draws (VAE posterior
samples, noise, timesteps) all come from the generator (or `StepDraws`) the caller passes, so a
step is reproducible from (seed, step) alone, under any number of processes.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import SchedulerMixin
from einops import rearrange

from latentsync.errors import UserError
from latentsync.losses.lpips_loss import lower_half_lpips
from latentsync.losses.noise import mixed_noise, one_step_x0, prediction_target
from latentsync.models.stable_syncnet import sync_loss
from latentsync.models.unet import Conditioning, unet_input
from latentsync.models.vae import decode_latents, posterior, scaled_sample
from latentsync.schedulers import check_prediction_type
from latentsync.training.state import StepDraws

LOSS_TERMS = ("recon", "sync", "lpips", "trepa")
WEIGHT_KEYS = {"recon": "recon_loss_weight", "sync": "sync_loss_weight", "lpips": "perceptual_loss_weight",
               "trepa": "trepa_loss_weight"}
PIXEL_TERMS = ("sync", "lpips", "trepa")  # the terms scored on decoded frames


@dataclass
class Models:
    """Everything a training step needs besides the batch."""

    unet: torch.nn.Module
    vae: torch.nn.Module
    scheduler: SchedulerMixin  # the training noise schedule (make_scheduler): add_noise, alphas_cumprod
    syncnet: torch.nn.Module | None = None
    syncnet_resolution: int = 256
    syncnet_lower_half: bool = True
    lpips: torch.nn.Module | None = None
    trepa: object | None = None  # TREPALoss
    latent_cache: "LatentCache | None" = None  # data.cache_latents

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self.scheduler.alphas_cumprod

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)


@dataclass
class StepSettings:
    """The `run:` settings that change what a step computes."""

    weights: dict
    pixel_space_supervise: bool
    use_syncnet: bool
    use_mixed_noise: bool = True
    mixed_noise_alpha: float = 1.0
    mask_loss_weight: float = 0.0  # extra weight of the generated (masked) region in the noise loss
    prediction_type: str = "epsilon"  # what the UNet outputs (latentsync/schedulers.py PREDICTION_TYPES)

    @classmethod
    def from_config(cls, run) -> "StepSettings":
        """The step settings of a UNet config's `run:` section (`UNetRun`)."""
        weights = {term: float(getattr(run, key) or 0) for term, key in WEIGHT_KEYS.items()}
        pixel = bool(run.pixel_space_supervise)
        use_sync = bool(run.use_syncnet) and pixel and weights["sync"] > 0
        if not pixel:
            weights.update({term: 0.0 for term in PIXEL_TERMS})
        if not use_sync:
            weights["sync"] = 0.0
        mask_weight = float(run.mask_loss_weight or 0.0)
        if mask_weight < 0:
            raise UserError(f"config: run.mask_loss_weight must be >= 0 (got {mask_weight})")
        prediction_type = check_prediction_type(run.prediction_type or "epsilon", "config: run")
        return cls(weights, pixel, use_sync, bool(run.use_mixed_noise), float(run.mixed_noise_alpha), mask_weight,
                   prediction_type)

    @property
    def active_terms(self) -> list[str]:
        """The loss terms with a positive weight (the ones recorded and charted)."""
        return [term for term in LOSS_TERMS if self.weights[term] > 0]


def vae_encode(vae, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Frames `[B, F, 3, H, W]` -> posterior samples, shifted and scaled by the VAE's own config
    (0.18215 for SD's VAE), as `[B, 4, F, h, w]` (fp32; models/vae.py, as inference)."""
    flat = rearrange(pixels, "b f c h w -> (b f) c h w").to(vae.device, vae.dtype)
    return sample_step_latents(vae, *posterior(vae, flat), generator, pixels.shape[0])


def sample_step_latents(vae, mean: torch.Tensor, std: torch.Tensor, generator, batch: int) -> torch.Tensor:
    """Posterior `(mean, std)` of `(b f)` frames -> UNet latents `[b, 4, f, h, w]`, the noise drawn
    with the step's draws (`StepDraws`: the same numbers under any number of processes)."""
    eps = StepDraws.of(generator).randn(mean.shape, mean.device)
    return rearrange(scaled_sample(vae, mean, std, eps), "(b f) c h w -> b c f h w", b=batch)


def vae_decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """Latents `[B, 4, F, h, w]` -> frames `[(B F), 3, H, W]` (with gradients; models/vae.py, as inference)."""
    return decode_latents(vae, rearrange(latents, "b c f h w -> (b f) c h w"))


def make_noise(shape, settings: StepSettings, generator, device) -> torch.Tensor:
    """Mixed noise (a shared frame plus independent noise), or one frame of noise repeated over all frames."""
    if settings.use_mixed_noise:
        return mixed_noise(tuple(shape), settings.mixed_noise_alpha, generator=generator, device=device)
    frame = torch.randn((*shape[:2], 1, *shape[3:]), generator=generator, device=device)
    return frame.expand(shape).contiguous()


def syncnet_frames(pred: torch.Tensor, batch: int, resolution: int, lower_half: bool) -> torch.Tensor:
    """Decoded frames `[(B F), 3, H, W]` -> SyncNet input `[B, F*3, res/2 or res, res]` (frame-major)."""
    if pred.shape[-1] != resolution:
        pred = F.interpolate(pred, size=(resolution, resolution), mode="bicubic", align_corners=False)
    frames = rearrange(pred, "(b f) c h w -> b (f c) h w", b=batch)
    return frames[:, :, resolution // 2:, :] if lower_half else frames


class LatentCache:
    """The frozen VAE's posterior (mean, std) of every training frame met so far, in memory
    (`data.cache_latents`): each frame and each masked frame is encoded once instead of at every
    step that draws it, which is most of a step's time for small UNets. Samples are drawn from
    the cached posteriors with the step's generator in the order `vae_encode` draws them, by the
    same code (models/vae.py), so a step computes what it would without the cache. Memory: two
    [4, h, w] pairs per frame (about 8 KB per frame at 16 x 16 latents): for small data sets.
    """

    def __init__(self, vae):
        self.vae = vae
        self.moments: dict[tuple[str, str, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def sample(self, kind: str, pixels: torch.Tensor, paths, starts, generator) -> torch.Tensor:
        """Posterior samples `[B, 4, F, h, w]` (scaled as `vae_encode`) of frames `starts[b] + f`
        of `paths[b]`, whose pixels are `pixels [B, F, 3, H, W]` (encoded only if not cached)."""
        batch, frames = pixels.shape[:2]
        keys = [(kind, str(paths[b]), int(starts[b]) + f) for b in range(batch) for f in range(frames)]
        missing = [i for i, key in enumerate(keys) if key not in self.moments]
        if missing:
            flat = rearrange(pixels, "b f c h w -> (b f) c h w")[missing].to(self.vae.device, self.vae.dtype)
            for i, mean, std in zip(missing, *posterior(self.vae, flat)):
                self.moments[keys[i]] = (mean, std)
        mean = torch.stack([self.moments[key][0] for key in keys])
        std = torch.stack([self.moments[key][1] for key in keys])
        return sample_step_latents(self.vae, mean, std, generator, batch)


def encode_latents(models: Models, batch: dict, generator, device) -> tuple[torch.Tensor, ...]:
    """VAE posterior samples of the gt, masked and reference frames (from the cache when on)."""
    cache = models.latent_cache
    if cache is None:
        return tuple(vae_encode(models.vae, batch[f"{kind}_pixel_values"].to(device), generator)
                     for kind in ("gt", "masked", "ref"))
    paths, starts, refs = batch["video_path"], batch["start_idx"], batch["ref_start_idx"]
    return (cache.sample("frame", batch["gt_pixel_values"], paths, starts, generator),
            cache.sample("masked", batch["masked_pixel_values"], paths, starts, generator),
            cache.sample("frame", batch["ref_pixel_values"], paths, refs, generator))


def encode_batch(models: Models, batch: dict, generator, device) -> tuple[torch.Tensor, Conditioning]:
    """(gt latents, the UNet's conditioning channels: mask, masked latents, ref latents) of a batch."""
    with torch.no_grad():
        gt_latents, masked_latents, ref_latents = encode_latents(models, batch, generator, device)
    batch_size = gt_latents.shape[0]
    masks = rearrange(batch["masks"].to(device).float(), "b f c h w -> (b f) c h w")
    masks = F.interpolate(masks, size=gt_latents.shape[-2:], mode="nearest")
    masks = rearrange(masks, "(b f) c h w -> b c f h w", b=batch_size)
    return gt_latents, Conditioning(masks, masked_latents, ref_latents)


def pixel_losses(models: Models, settings: StepSettings, pred: torch.Tensor, batch: dict, device) -> dict:
    """LPIPS, TREPA and sync losses of the decoded prediction `[(B F), 3, H, W]` against the batch."""
    gt = batch["gt_pixel_values"].to(device)
    batch_size = gt.shape[0]
    gt_flat = rearrange(gt, "b f c h w -> (b f) c h w").to(pred.dtype)
    terms = {}
    if settings.weights["lpips"] > 0:
        terms["lpips"] = lower_half_lpips(models.lpips, pred, gt_flat)
    if settings.weights["trepa"] > 0:
        as_clip = lambda x: rearrange(x, "(b f) c h w -> b c f h w", b=batch_size)  # noqa: E731
        terms["trepa"] = models.trepa(as_clip(pred), as_clip(gt_flat))
    if settings.use_syncnet:
        dtype = next(models.syncnet.parameters()).dtype
        frames = syncnet_frames(pred, batch_size, models.syncnet_resolution, models.syncnet_lower_half)
        vision, audio = models.syncnet(frames.to(dtype), batch["mel"].to(device, dtype))
        terms["sync"] = sync_loss(vision, audio, torch.ones(batch_size, device=device))
    return terms


def noise_loss(eps: torch.Tensor, noise: torch.Tensor, keep: torch.Tensor, mask_weight: float) -> torch.Tensor:
    """MSE of the UNet's output `eps` against its target `noise` (the noise, or with
    run.prediction_type the clean latent or v); with `mask_weight` w > 0, latents of the generated region
    (`keep` = 0: the mouth and jaw the model must invent from the audio) count 1 + w times as much
    as the rest, which the masked frame already shows; normalised so the loss keeps its scale
    (w = 0 is the reference's plain MSE)."""
    squared = (eps.float() - noise.float()) ** 2
    if mask_weight <= 0:
        return squared.mean()
    weights = 1.0 + mask_weight * (1.0 - keep.float())  # [B, 1, F, h, w], broadcast over channels
    return (squared * weights).mean() / weights.mean()


def training_step(models: Models, batch: dict, settings: StepSettings, generator: "torch.Generator | StepDraws",
                  autocast=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted loss of one batch and its active terms (see StepSettings.active_terms)."""
    unet = models.unet
    device = next(p for p in unet.parameters()).device
    draws = StepDraws.of(generator)
    gt_latents, condition = encode_batch(models, batch, draws, device)
    noise = draws.local(lambda shape: make_noise(shape, settings, draws.generator, device), gt_latents.shape)
    timesteps = draws.randint(models.num_train_timesteps, (gt_latents.shape[0],), device)
    noisy = models.scheduler.add_noise(gt_latents, noise, timesteps)  # in fp32
    abar = models.alphas_cumprod.to(device)[timesteps].reshape(-1, 1, 1, 1, 1)
    audio = batch["audio_embeds"].to(device)
    with autocast if autocast is not None else torch.autocast(device.type, enabled=False):
        out = unet(unet_input(noisy, condition), timesteps, encoder_hidden_states=audio).sample
    target = prediction_target(noise, gt_latents, abar, settings.prediction_type)
    terms = {"recon": noise_loss(out, target, condition.mask, settings.mask_loss_weight)}
    if settings.pixel_space_supervise and any(settings.weights[k] > 0 for k in PIXEL_TERMS):
        x0 = one_step_x0(noisy, out, models.alphas_cumprod, timesteps, settings.prediction_type)
        terms.update(pixel_losses(models, settings, vae_decode(models.vae, x0), batch, device))
    loss = sum(settings.weights[name] * value.float() for name, value in terms.items())
    return loss, {name: terms[name].detach() for name in settings.active_terms}
