"""Training a small VAE (diffusers `AutoencoderKL`) on aligned face crops, for when Stable
Diffusion's VAE cannot be used (e.g. offline, or a CPU benchmark at 128 px).

    python -m scripts.train_vae --config_path configs/vae/learnability.yaml

Reading order: `train` is the whole loop; the run folder, checkpoints, exact resume, LR schedule,
TensorBoard and charts are the shared core (latentsync/training/core.py). Data: every
`data.frame_stride`-th frame of the clips of `data.train_fileslist` / `data.train_data_dir`
(aligned faces, e.g. the data pipeline's output, the UNet's training clips), resized to
`data.resolution` and decoded once into a uint8 frame bank (`.npy`, read through a memory map,
so memory does not grow with the data). A sample is one frame drawn by its index (and flipped
left-right with `data.horizontal_flip`, cut to a random `data.crop_size` square if set), so
resuming reproduces the uninterrupted run, and N processes (`accelerate launch --multi_gpu`)
train as one with N times the batch (docs/training.md, "Several processes").

Loss: `loss.l1_weight` x L1 + `loss.mse_weight` x MSE between the decoded posterior sample and the
input, + `loss.kl_weight` x the KL divergence to N(0, 1) per latent element. Validation: PSNR and
L1 of the posterior mean's reconstruction on `data.num_val_frames` fixed frames (of the
validation clips if configured, else of the training frames).

Besides the core's files, every checkpoint step is also exported as a diffusers folder
`checkpoints/vae-<step>/` (config.json + diffusion_pytorch_model.safetensors), and the newest one
as `<run>/vae/`: that folder is what `--vae_path` and the UNet config's `ckpt.vae_path` take.
Its config carries the latent scale measured on the training faces (`scaling_factor` = 1 / std of
the posterior samples of `latents.scale_samples` frames, as Stable Diffusion got 0.18215) and,
with `latents.shift: true`, `shift_factor` = their mean (else null).
"""

import copy
import hashlib
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Optional

import numpy as np
import torch
from diffusers import AutoencoderKL
from omegaconf import MISSING
from tqdm import tqdm

from latentsync.constants import MODEL_FPS
from latentsync.data.common import resized_uint8, sample_rng
from latentsync.data.syncnet_dataset import videos_from_config
from latentsync.errors import UserError
from latentsync.io import atomic_output
from latentsync.models.vae import measure_latent_stats
from latentsync.training.config import DataSection, TrainingConfig, load_training_config, signature_keys
from latentsync.training.core import Run, RunKind, find_resume
from latentsync.training.options import TrainOptions
from latentsync.training.state import CHECKPOINTS_DIR, StepDraws
from latentsync.video import count_frames, iter_frames

KIND = RunKind("VAE", "latentsync-vae-training-state", "--config_path")
LATENT_CHANNELS = 4  # the UNet's input: noisy 4 + masked 4 + mask 1 + reference 4 channels
DOWNSAMPLE = 8  # latents are 1/8 of the face size, as with SD's VAE (the UNet configs assume it)
FRAME_BANK_VERSION = 1  # bump when the bank's content changes (invalidates cached banks)
FRAMES_DIR, EXPORT_DIR, EXPORT_NAME = "frames", "vae", "vae-{step}"
ENCODE_CHUNK = 16  # frames per forward pass when measuring or validating
CLIP_ERRORS = (OSError, ValueError, RuntimeError, IndexError, EOFError)


@dataclass
class VAEData(DataSection):
    resolution: int = MISSING  # faces are resized to res x res (a multiple of 8)
    val_fileslist: Optional[str] = ""  # optional held-out clips for the validation PSNR (else training frames)
    val_data_dir: Optional[str] = ""
    frame_cache_dir: Optional[str] = ""  # where the decoded frame bank is kept (default: <run>/frames)
    frame_stride: int = 1  # every Nth frame of each clip
    horizontal_flip: bool = True
    crop_size: int = 0  # > 0: random crop_size squares (a multiple of 8); 0: whole faces
    num_val_frames: int = 64


@dataclass
class LossWeights:
    l1_weight: float = 1.0
    mse_weight: float = 0.0
    kl_weight: float = 1e-6  # per latent element


@dataclass
class LatentStats:
    scale_samples: int = 512  # frames encoded to measure scaling_factor
    shift: bool = False  # true: also store shift_factor = latent mean (else null, as SD's VAE)


@dataclass
class VAEConfig(TrainingConfig):
    data: VAEData = field(default_factory=VAEData)
    loss: LossWeights = field(default_factory=LossWeights)
    latents: LatentStats = field(default_factory=LatentStats)

    KEY_SPECS: ClassVar = {"model": signature_keys(AutoencoderKL)}

    def check(self, path) -> None:
        super().check(path)
        data, loss = self.data, self.loss
        res, crop = data.resolution, data.crop_size
        if res < DOWNSAMPLE or res % DOWNSAMPLE:
            raise UserError(f"{path}: data.resolution {res!r} must be a positive multiple of {DOWNSAMPLE}")
        self.model["sample_size"] = res
        if crop < 0 or crop % DOWNSAMPLE or crop > res:
            raise UserError(f"{path}: data.crop_size {crop!r} must be 0 (whole faces) or a multiple of "
                            f"{DOWNSAMPLE} up to data.resolution {res}")
        for key, value in (("data.frame_stride", data.frame_stride), ("data.num_val_frames", data.num_val_frames),
                           ("latents.scale_samples", self.latents.scale_samples)):
            if value < 1:
                raise UserError(f"{path}: {key} must be at least 1 (got {value})")
        if min(loss.l1_weight, loss.mse_weight, loss.kl_weight) < 0 or loss.l1_weight + loss.mse_weight <= 0:
            raise UserError(f"{path}: loss weights must be >= 0 with loss.l1_weight or loss.mse_weight > 0 "
                            f"(got {loss})")
        check_model(self, path)


def load_config(config_path: str, options: TrainOptions) -> VAEConfig:
    """The VAE YAML with overrides and defaults applied, checked; UserError naming the file otherwise."""
    return load_training_config(VAEConfig, config_path, options.overrides, options.train_output_dir,
                                options.max_train_steps)


def build_vae(config: VAEConfig, config_path, device="cpu") -> AutoencoderKL:
    """The AutoencoderKL of the config's `model:` section (on the meta device for checks)."""
    try:
        with torch.device(device):
            return AutoencoderKL.from_config(copy.deepcopy(config.model))
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise UserError(f"{config_path}: cannot build the VAE from the model section "
                        f"({str(e).splitlines()[0]})") from None


def check_model(config: VAEConfig, config_path) -> None:
    """The VAE must turn res x res faces into 4-channel latents of res/8 x res/8 (a meta-device
    forward pass: no memory, no weights)."""
    res = config.data.resolution
    vae = build_vae(config, config_path, device="meta")
    try:
        with torch.device("meta"):
            latents = vae.encode(torch.zeros(1, 3, res, res)).latent_dist.mean
    except (RuntimeError, ValueError, TypeError) as e:
        raise UserError(f"{config_path}: the VAE does not take {res}x{res} faces ({str(e).splitlines()[0]})") from None
    expected = (1, LATENT_CHANNELS, res // DOWNSAMPLE, res // DOWNSAMPLE)
    if tuple(latents.shape) != expected:
        raise UserError(f"{config_path}: the VAE makes latents {list(latents.shape[1:])} of {res}x{res} faces; the "
                        f"UNet needs {list(expected[1:])} (model.latent_channels {LATENT_CHANNELS} and "
                        f"{int(math.log2(DOWNSAMPLE)) + 1} blocks, i.e. downsampling by {DOWNSAMPLE})")


def clip_lists(config: VAEConfig) -> tuple[list[str], list[str] | None]:
    """Training clips (required) and validation clips (optional); UserError naming the setting."""
    data = config.data
    return (videos_from_config(data.train_fileslist, data.train_data_dir, required=True),
            videos_from_config(data.val_fileslist, data.val_data_dir, "val"))


# --------------------------------------------------------------------------------------------
# data


def bank_path(clips: list[str], resolution: int, stride: int, folder) -> Path:
    """Where the frame bank of these clips lives: keyed by their paths, sizes and modification
    times and the bank settings, so an edited clip or another resolution makes a new bank."""
    parts = [f"v{FRAME_BANK_VERSION}", str(resolution), str(stride)]
    for clip in clips:
        stat = os.stat(clip)
        parts.append(f"{os.path.abspath(clip)}|{stat.st_size}|{stat.st_mtime_ns}")
    key = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
    return Path(folder) / f"frames-{resolution}px-{key}.npy"


def frame_bank(clips: list[str], resolution: int, stride: int, folder, show_progress: bool = False) -> np.ndarray:
    """uint8 `[N, res, res, 3]`: every `stride`-th frame of the clips (at 25 fps), resized; read
    through a memory map from `folder` (decoded and written first if absent, chunk by chunk)."""
    path = bank_path(clips, resolution, stride, folder)
    if not path.is_file():
        write_frame_bank(path, clips, resolution, stride, show_progress)
    return np.load(path, mmap_mode="r")


def write_frame_bank(path: Path, clips: list[str], resolution: int, stride: int, show_progress: bool) -> None:
    """Decode the clips into `path` (temp name, then rename); UserError naming a clip that fails."""
    try:
        counts = [math.ceil(count_frames(clip, MODEL_FPS) / stride) for clip in clips]
    except (UserError, *CLIP_ERRORS) as e:
        raise UserError(f"cannot read the training clips ({str(e).splitlines()[0]})") from None
    with atomic_output(path) as temp:
        bank = np.lib.format.open_memmap(temp, mode="w+", dtype=np.uint8,
                                         shape=(sum(counts), resolution, resolution, 3))
        filled = 0
        for clip, count in tqdm(list(zip(clips, counts)), desc="decoding frames", disable=not show_progress):
            written = decode_clip(clip, bank[filled:filled + count], resolution, stride)
            if written != count:
                raise UserError(f"{clip}: decoded {written} frames where {count} were expected")
            filled += count
        bank.flush()
        del bank


def decode_clip(clip: str, out: np.ndarray, resolution: int, stride: int) -> int:
    """Write every `stride`-th frame of `clip` into `out`; returns how many were written."""
    written = seen = 0
    try:
        for chunk in iter_frames(clip, fps=MODEL_FPS):
            picked = chunk[(-seen) % stride::stride]
            seen += len(chunk)
            n = min(len(picked), len(out) - written)
            out[written:written + n] = resized_uint8(picked[:n], resolution)
            written += n
    except CLIP_ERRORS as e:
        raise UserError(f"{clip}: cannot decode the clip ({str(e).splitlines()[0]})") from None
    return written


class FaceFrames(torch.utils.data.Dataset):
    """Sample k = one frame of the bank drawn by a private RNG keyed by (seed, k), flipped
    left-right half the time with `flip`, and cut to a random `crop` x `crop` square when `crop`
    is set (the VAE is convolutional: crops teach it the same faces at a fraction of the cost):
    float32 `[3, crop or res, crop or res]` in [-1, 1]."""

    def __init__(self, bank: np.ndarray, seed: int, flip: bool, crop: int = 0):
        self.bank, self.seed, self.flip, self.crop = bank, seed, flip, crop

    def __len__(self) -> int:
        return len(self.bank)

    def __getitem__(self, index: int) -> torch.Tensor:
        rng = sample_rng("vae", self.seed, 0, index)
        frame = self.bank[rng.randrange(len(self.bank))]
        if self.flip and rng.random() < 0.5:
            frame = frame[:, ::-1]
        if self.crop:
            top, left = (rng.randrange(size - self.crop + 1) for size in frame.shape[:2])
            frame = frame[top:top + self.crop, left:left + self.crop]
        return to_pixels(frame[None])[0]


def to_pixels(frames: np.ndarray) -> torch.Tensor:
    """uint8 `[N, H, W, 3]` -> float32 `[N, 3, H, W]` in [-1, 1]."""
    return torch.from_numpy(np.array(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # a copy: the bank is read-only


def spread(bank: np.ndarray, count: int) -> np.ndarray:
    """Indices of `count` frames evenly spread over the bank (all of them if it has fewer)."""
    return np.unique(np.linspace(0, len(bank) - 1, min(count, len(bank))).round().astype(np.int64))


def chunks(bank: np.ndarray, indices: np.ndarray):
    """The frames at `indices` as pixel batches of ENCODE_CHUNK."""
    for start in range(0, len(indices), ENCODE_CHUNK):
        yield to_pixels(bank[indices[start:start + ENCODE_CHUNK]])


# --------------------------------------------------------------------------------------------
# step, validation, export


def psnr(mse: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of a mean squared error of [-1, 1] images (peak-to-peak 2, as 0-255 images)."""
    return 10.0 * torch.log10(4.0 / mse.clamp_min(1e-10))


class Reconstruction(torch.nn.Module):
    """The VAE's training pass as one module call (what accelerate wraps for several processes,
    whose gradient averaging needs the forward call): encode, draw a posterior sample, decode."""

    def __init__(self, vae: AutoencoderKL):
        super().__init__()
        self.vae = vae

    def forward(self, pixels: torch.Tensor, draws: StepDraws) -> tuple[torch.Tensor, ...]:
        """(reconstruction, KL divergence to N(0, 1) of each sample, the posterior samples)."""
        posterior = self.vae.encode(pixels).latent_dist
        latents = draws.posterior_sample(posterior)
        return self.vae.decode(latents).sample, posterior.kl(), latents


def training_step(model: Reconstruction, pixels: torch.Tensor, weights: LossWeights,
                  draws: "StepDraws | torch.Generator", autocast) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Encode, draw a posterior sample with `draws`, decode; the weighted loss and its terms
    (l1, mse and kl per latent element; psnr of the batch, not part of the loss)."""
    with autocast:
        recon, kl, latents = model(pixels, StepDraws.of(draws))
    error = recon.float() - pixels.float()
    l1, mse = error.abs().mean(), error.square().mean()
    kl = kl.float().mean() / latents[0].numel()
    loss = weights.l1_weight * l1 + weights.mse_weight * mse + weights.kl_weight * kl
    return loss, {"l1": l1.detach(), "mse": mse.detach(), "kl": kl.detach(), "psnr": psnr(mse.detach())}


@torch.no_grad()
def evaluate(vae: AutoencoderKL, frames: torch.Tensor) -> dict[str, float]:
    """Mean per-frame PSNR and L1 of the posterior mean's reconstruction (clamped to [-1, 1])."""
    was_training = vae.training
    vae.eval()
    scores, l1 = [], []
    for start in range(0, len(frames), ENCODE_CHUNK):
        pixels = frames[start:start + ENCODE_CHUNK].to(vae.device)
        recon = vae.decode(vae.encode(pixels).latent_dist.mode()).sample.float().clamp(-1, 1)
        error = recon - pixels
        scores.append(psnr(error.square().mean(dim=(1, 2, 3))))
        l1.append(error.abs().mean(dim=(1, 2, 3)))
    vae.train(was_training)
    return {"psnr": torch.cat(scores).mean().item(), "l1": torch.cat(l1).mean().item()}


def save_folder(vae: AutoencoderKL, folder: Path) -> None:
    """`vae.save_pretrained(folder)` (safetensors) under a temporary name, then swapped into place."""
    tmp, old = folder.with_name(f".{folder.name}.partial"), folder.with_name(f".{folder.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    vae.save_pretrained(tmp, safe_serialization=True)
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def export(vae: AutoencoderKL, run: Run, bank: np.ndarray, config: VAEConfig) -> tuple[Path, float, float | None]:
    """Measure the latent scale (and shift) on the training frames, write them into the VAE's
    config and save it as `checkpoints/vae-<step>/` and `<run>/vae/`. Returns (folder, scale, shift)."""
    indices = spread(bank, config.latents.scale_samples)
    generator = torch.Generator(device=vae.device).manual_seed(config.run.seed)
    was_training = vae.training
    vae.eval()
    mean, std = measure_latent_stats(vae, chunks(bank, indices), generator)
    vae.train(was_training)
    scale, shift = 1.0 / std, (mean if config.latents.shift else None)
    vae.register_to_config(scaling_factor=scale, shift_factor=shift)
    folder = run.dir / CHECKPOINTS_DIR / EXPORT_NAME.format(step=run.step)
    save_folder(vae, folder)
    save_folder(vae, run.dir / EXPORT_DIR)
    return folder, scale, shift


# --------------------------------------------------------------------------------------------
# the loop


def train(options: TrainOptions) -> Path:
    """Train (or resume) a VAE run; returns the run folder (the VAE to use is `<run>/vae/`)."""
    resume, config_path = find_resume(options, KIND)
    config = load_config(config_path, options)
    train_clips, val_clips = clip_lists(config)  # before any folder is made: bad lists fail first
    run = Run(KIND, config, options, resume)
    data, seed = config.data, config.run.seed
    res, stride = data.resolution, data.frame_stride
    cache = Path(data.frame_cache_dir or run.dir / FRAMES_DIR)
    with run.accelerator.main_process_first():  # the main process decodes the banks, the others read them
        bank = frame_bank(train_clips, res, stride, cache, options.show_progress and run.is_main)
        val_bank = frame_bank(val_clips, res, stride, cache, options.show_progress and run.is_main) if val_clips else bank
    val_frames = to_pixels(val_bank[spread(val_bank, data.num_val_frames)])

    torch.manual_seed(seed)  # the same initial weights every time
    vae = build_vae(config, config_path)
    if config.run.gradient_checkpointing:
        vae.enable_gradient_checkpointing()
    run.load_resumed_weights(vae)
    model = run.prepare(Reconstruction(vae.train()), vae.parameters(), weights=vae)
    run.begin(f"{len(train_clips)} training clips ({len(bank)} frames at {res} px), "
              f"{len(val_frames)} validation frames ({'validation clips' if val_clips else 'training frames'})")

    dataset = FaceFrames(bank, seed, data.horizontal_flip, data.crop_size)
    batches = run.batches(dataset, data.batch_size, num_workers=data.num_workers)
    while not run.done:
        loss, terms = training_step(model, next(batches).to(run.device), config.loss, run.draws("vae-step"),
                                    run.accelerator.autocast())
        run.accelerator.backward(loss)
        run.optimizer_step()
        run.record("train", loss=run.mean(loss), **{name: run.mean(value) for name, value in terms.items()})
        if run.validation_due():
            run.record("val", **evaluate(vae, val_frames))
        if run.checkpoint_if_due() is not None:
            folder, scale, shift = export(vae, run, bank, config)
            run.write(f"step {run.step}: exported {folder} (scaling_factor {scale:.5f}, shift_factor {shift})")
    return run.finish()
