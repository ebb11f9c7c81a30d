"""What the learnability benchmark trains and how big: the full run and the --quick run.

The model sizes, learning rates and default step counts live in configs/*/learnability.yaml (the
full run). The quick run overrides them on the trainers' command lines, with the same trainers:
counts (clips, steps, samples) and, to stay within its 8 minutes on two cores, a cheaper SyncNet (32 px
faces: 2x cheaper steps, learning as fast per step as at 64 px). Both runs train the UNet's first
stage on batches of 2 clips x 4 frames instead of the config's 1 x 16 (at equal compute, 1000 such
steps gave a dub mouth-opening correlation of 0.55 against 0.37 for 500 steps of 16 frames: more
clips per step beat more frames per clip); stage 2 keeps 16 frames (the SyncNet loss's window).
Dubs take 3 (quick) or 5 denoising steps: on the quick run's models 3 steps scored as 5 did
(mouth-opening correlation 0.354 against 0.345 on 7 whole clips), in 22 % less time.
Every later step builds the SyncNet from its run's own config.yaml (Layout.syncnet_config).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VAE_CONFIG = REPO / "configs/vae/learnability.yaml"
SYNCNET_CONFIG = REPO / "configs/syncnet/learnability.yaml"
UNET_CONFIG = REPO / "configs/unet/learnability.yaml"
REAL_WHISPER = REPO / "checkpoints/whisper/tiny.pt"
# stage 2 (configs/unet/learnability.yaml says the same): motion modules on, pixel-space losses,
# the benchmark's SyncNet as a loss, only the motion modules and attentions trained
STAGE2_OVERRIDES = ["model.use_motion_module=true", "run.pixel_space_supervise=true", "run.use_syncnet=true",
                    "run.sync_loss_weight=0.05", "run.trainable_modules=[motion_modules.,attentions.]",
                    "optimizer.lr=2e-4"]
# stage 1 (both runs): batches of 2 clips x 4 frames instead of the config's 1 x 16 (docstring)
STAGE1_OVERRIDES = ["data.num_frames=4", "data.batch_size=2"]
# OpenAI Whisper tiny's shape (384-d features); used for a seeded random encoder when the real
# checkpoint is absent (it cannot be downloaded here)
WHISPER_TINY_DIMS = dict(n_mels=80, n_audio_ctx=1500, n_audio_state=384, n_audio_head=6, n_audio_layer=4,
                         n_vocab=51865, n_text_ctx=448, n_text_state=384, n_text_head=6, n_text_layer=1)


@dataclass
class Plan:
    """Counts of one benchmark run."""

    name: str
    num_clips: int
    heldout_fraction: float
    min_seconds: float
    size: int
    vae_steps: int
    syncnet_steps: int
    stage1_steps: int
    stage2_steps: int
    syncnet_eval_samples: int
    inference_steps: int
    max_dubs: int  # held-out clips dubbed (all of them when larger)
    dub_frames: int = 0  # each dub an excerpt of this many frames (dubbing.speech_start; 0: the whole clip)
    vae_overrides: list[str] = field(default_factory=list)
    syncnet_overrides: list[str] = field(default_factory=list)
    unet_overrides: list[str] = field(default_factory=list)  # both UNet stages
    stage1_overrides: list[str] = field(default_factory=list)  # stage 1 only (stage 2 keeps the config's)


FULL = Plan(name="full", num_clips=128, heldout_fraction=0.2, min_seconds=5.0, size=256,
            vae_steps=300, syncnet_steps=4000, stage1_steps=4000, stage2_steps=300,
            syncnet_eval_samples=1024, inference_steps=5, max_dubs=12,
            stage1_overrides=STAGE1_OVERRIDES)
QUICK = Plan(name="quick", num_clips=46, heldout_fraction=0.15, min_seconds=3.2, size=256,
             vae_steps=60, syncnet_steps=1000, stage1_steps=550, stage2_steps=10,
             syncnet_eval_samples=1024, inference_steps=3, max_dubs=5, dub_frames=48,
             vae_overrides=["latents.scale_samples=128", "data.num_val_frames=16", "ckpt.save_ckpt_steps=30"],
             syncnet_overrides=["data.resolution=32", "model.visual_encoder.downsample_factors=[2,1,2,2,2,2,1]",
                                "data.num_val_samples=64", "run.validation_steps=100", "ckpt.save_ckpt_steps=100"],
             unet_overrides=["run.validation_steps=1000000", "ckpt.save_ckpt_steps=100"],
             stage1_overrides=STAGE1_OVERRIDES)
PLANS = {"full": FULL, "quick": QUICK}


def _folder(*parts: str) -> property:
    """A Layout property: the path `root / parts...`."""
    return property(lambda layout: layout.root.joinpath(*parts), doc=f"WORK/{'/'.join(parts)}")


@dataclass
class Layout:
    """Where each step writes under the work folder."""

    root: Path

    corpus = _folder("corpus")
    whisper = _folder("whisper", "tiny.pt")
    runs = _folder("runs")
    cache = _folder("cache")
    dubs = _folder("dubs")
    report = _folder("report")
    logs = _folder("logs")

    def data(self, split: str) -> Path:
        return self.root / "data" / split

    def clips(self, split: str) -> Path:
        """The data pipeline's final clips of one corpus split."""
        return self.data(split) / "high_visual_quality"

    def run_dir(self, name: str) -> Path:
        return self.runs / name

    def checkpoint(self, name: str, step: int) -> Path:
        return self.run_dir(name) / "checkpoints" / f"checkpoint-{step}.pt"

    @property
    def syncnet_config(self) -> Path:
        """The trained SyncNet's config as its trainer used it (the plan's overrides applied): what
        every later step that loads the SyncNet builds it from."""
        return self.run_dir("syncnet") / "config.yaml"

    @property
    def vae(self) -> Path:
        return self.run_dir("vae") / "vae"
