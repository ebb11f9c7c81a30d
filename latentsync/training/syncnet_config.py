"""The SyncNet trainer's config (`configs/syncnet/*.yaml`, the reference's schema) and the input
check that both the SyncNet trainer and the UNet trainer's sync loss need: can a SyncNet of a
`model:` section take the frames and the mel window it will be given."""

from dataclasses import dataclass, field
from typing import ClassVar, Optional

import torch
from omegaconf import MISSING

from latentsync.audio import MEL_N_MELS, mel_window_length
from latentsync.constants import MODEL_FPS, SAMPLE_RATE
from latentsync.errors import UserError
from latentsync.models.stable_syncnet import ENCODER_KEYS, StableSyncNet
from latentsync.training.config import CkptSection, DataSection, RunSection, TrainingConfig

DEFAULT_TEMPERATURE = 0.1  # run.contrastive_temperature: cosines in [0, 1] become logits in [0, 10]


@dataclass
class SyncNetData(DataSection):
    num_frames: int = MISSING
    resolution: int = MISSING
    lower_half: bool = MISSING  # the lower half of the face (true) or the whole face
    num_val_samples: int = MISSING  # validation runs exactly this many samples
    val_fileslist: Optional[str] = ""
    val_data_dir: Optional[str] = ""  # searched recursively, as data.train_data_dir
    gradient_accumulation_steps: int = 1
    latent_space: bool = False  # the reference's VAE-latent SyncNet: refused by this trainer
    audio_mel_cache_dir: Optional[str] = ""
    audio_sample_rate: int = SAMPLE_RATE
    video_fps: float = MODEL_FPS
    cache_frames: bool = False  # keep decoded clips in memory (small corpora)
    windows_per_clip: int = 1  # consecutive samples drawn from one clip (same-clip InfoNCE negatives)


@dataclass
class SyncNetCkpt(CkptSection):
    resume_ckpt_path: Optional[str] = ""  # an official checkpoint to start from (weights, step, history)
    inference_ckpt_path: Optional[str] = ""  # ignored by the trainer (the reference's configs carry it)


@dataclass
class SyncNetRun(RunSection):
    contrastive_loss_weight: float = 0.0  # weight of the batch InfoNCE next to the BCE (0: the reference)
    contrastive_temperature: float = DEFAULT_TEMPERATURE


@dataclass
class SyncNetConfig(TrainingConfig):
    data: SyncNetData = field(default_factory=SyncNetData)
    ckpt: SyncNetCkpt = field(default_factory=SyncNetCkpt)
    run: SyncNetRun = field(default_factory=SyncNetRun)

    KEY_SPECS: ClassVar = {"model": {"audio_encoder": dict.fromkeys(ENCODER_KEYS),
                                     "visual_encoder": dict.fromkeys(ENCODER_KEYS)}}

    def check(self, path) -> None:
        super().check(path)
        data, run = self.data, self.run
        if data.latent_space:
            raise UserError(f"{path}: data.latent_space: true (VAE-latent SyncNet) is not supported by this trainer")
        if run.contrastive_loss_weight < 0 or run.contrastive_temperature <= 0:
            raise UserError(f"{path}: run.contrastive_loss_weight must be >= 0 and run.contrastive_temperature > 0 "
                            f"(got {run.contrastive_loss_weight}, {run.contrastive_temperature})")
        check_syncnet_input(self.model, data.num_frames, data.resolution, data.lower_half, path, fps=data.video_fps)


def check_syncnet_input(model_config, num_frames: int, resolution: int, lower_half: bool, where,
                        fps: float = MODEL_FPS) -> None:
    """Fail early, naming `where`, when a SyncNet of `model_config` cannot take `num_frames` frames
    of `resolution` px (lower half or whole) with their mel window, or when its visual and audio
    embeddings differ in shape (a meta-device forward pass: no memory, no weights)."""
    height = resolution // 2 if lower_half else resolution
    frames = (1, 3 * num_frames, height, resolution)
    mel = (1, 1, MEL_N_MELS, mel_window_length(num_frames, fps))
    try:
        with torch.device("meta"):
            vision, audio = StableSyncNet.from_config(model_config)(torch.zeros(frames), torch.zeros(mel))
    except (RuntimeError, ValueError, TypeError) as e:
        raise UserError(f"{where}: the SyncNet does not accept {num_frames} frames of {height}x{resolution} and a "
                        f"{mel[-1]}-column mel ({str(e).splitlines()[0]})") from None
    if vision.shape != audio.shape:
        raise UserError(f"{where}: visual and audio embeddings differ in size ({list(vision.shape[1:])} vs "
                        f"{list(audio.shape[1:])}) for {num_frames} frames of {height}x{resolution}; check the "
                        "encoders' channels and downsample factors")
