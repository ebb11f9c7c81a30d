"""Training the LatentSync UNet, stage 1 and stage 2.

    python -m scripts.train_unet --unet_config_path configs/unet/stage2.yaml

Reading order: `train` is the whole loop. The pieces live by concern: `unet_config` (loading and
every check a user can fail, before any weights), `unet_models` (initial weights, frozen loss
networks), `unet_step` (one optimisation step: VAE latents -> mixed noise -> UNet ->
noise-prediction loss -> one-step x0 estimate decoded to pixels -> LPIPS, SyncNet and TREPA
losses), `unet_validation` (validation videos and their sync confidence), and the shared core
(run folder, checkpoints, exact resume, LR schedule, TensorBoard, charts: `core`).

Besides the core's files a run folder holds syncnet_config.yaml (the sync loss's SyncNet config),
val_videos/val_video_<step>.mp4 and, with ckpt.syncnet_v2_path, the validation sync confidence in
the history and the chart. The official checkpoint is {"state_dict", "global_step"}: inference
and `load_unet` load it strictly.

Differences from the reference: any device (CPU included; fp16 autocast and the grad scaler only
on CUDA); the random draws of step k (VAE posterior samples, noise, timesteps) come from a
generator keyed by (seed, k), drawn for the global batch, and samples are keyed by their index,
so resuming reproduces the uninterrupted run and N processes train as one with N times the
batch (docs/training.md); the optimiser state is saved; Whisper features are computed before
training (see latentsync/data/unet_dataset.py); a non-empty `trainable_modules` list is honoured
even without motion modules (the reference ignores it then; its stage-1 configs have an empty
list, which means "all parameters"); initial weights load strictly except for the motion modules
a stage-1 checkpoint lacks and the reference's SD-1.5 dropping rules.
"""

import math
from pathlib import Path

import torch

from latentsync.audio import AudioEncoder
from latentsync.data.unet_dataset import UNetDataOptions, UNetDataset, prepare_audio_features
from latentsync.errors import UserError
from latentsync.face.mask import resolve_mask
from latentsync.training.core import Run, RunKind, find_resume
from latentsync.training.options import TrainOptions
from latentsync.training.unet_config import UNetConfig, build_unet, check_config, load_config, select_trainable
from latentsync.training.unet_models import build_models, load_initial_weights
from latentsync.training.unet_step import StepSettings, training_step
from latentsync.training.unet_validation import Validator

KIND = RunKind("UNet", "latentsync-unet-training-state", "--unet_config_path")


def make_encoder(config: UNetConfig, run: Run, cross_attention_dim: int) -> AudioEncoder:
    """The Whisper encoder of the audio features; UserError if its width does not fit the UNet."""
    encoder = AudioEncoder(config.ckpt.whisper_path, device=run.device,
                           cache_dir=config.data.audio_embeds_cache_dir or (run.dir / "audio_embeds"))
    if encoder.dim != cross_attention_dim:
        raise UserError(f"{config.ckpt.whisper_path}: gives {encoder.dim}-d features but the UNet has "
                        f"cross_attention_dim {cross_attention_dim}")
    return encoder


def build_dataset(config: UNetConfig, clips: list[str], encoder, settings: StepSettings, show_progress: bool):
    """The training samples, with every clip's Whisper features computed (or read from the cache) first."""
    data = config.data
    features = prepare_audio_features(clips, encoder, data.audio_sample_rate, show_progress)
    options = UNetDataOptions(
        num_frames=data.num_frames, resolution=data.resolution, mask_path=str(resolve_mask(data.mask_image_path)),
        fps=data.video_fps, sample_rate=data.audio_sample_rate, use_mel=settings.use_syncnet,
        mel_cache_dir=data.audio_mel_cache_dir or None, seed=config.run.seed, cache_frames=data.cache_frames)
    return UNetDataset(clips, features, options)


def max_steps_of(config: UNetConfig, num_samples: int, samples_per_step: int) -> int:
    """run.max_train_steps, or fewer when run.max_train_epochs (> 0) ends the run first."""
    max_steps, epochs = config.run.max_train_steps, config.run.max_train_epochs
    return min(max_steps, epochs * max(1, math.ceil(num_samples / samples_per_step))) if epochs > 0 else max_steps


def train(options: TrainOptions) -> Path:
    """Train (or resume) a UNet run; returns the run folder."""
    resume, config_path = find_resume(options, KIND)
    config = load_config(config_path, options)
    clips = check_config(config, config_path)  # everything a user can get wrong, before any weights
    settings = StepSettings.from_config(config.run)
    run = Run(KIND, config, options, resume)
    data, run_config = config.data, config.run

    # the UNet in fp32 (autocast does the mixed precision), the frozen networks in the run's weight dtype
    torch.manual_seed(run_config.seed)  # same initial weights in every process
    unet = build_unet(config.model, config_path)
    if not run.load_resumed_weights(unet) and config.ckpt.resume_ckpt_path:
        run.step, run.history = load_initial_weights(unet, config.ckpt.resume_ckpt_path)
    trainable_names = select_trainable(unet, list(run_config.trainable_modules))
    unet.to(run.device).train()
    if run_config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    models = build_models(config, unet, run.device, run.weight_dtype, settings)
    encoder = make_encoder(config, run, unet.config.cross_attention_dim)
    with run.accelerator.main_process_first():  # process 0 fills the feature cache, the others read it
        dataset = build_dataset(config, clips, encoder, settings, options.show_progress and run.is_main)
    samples_per_step = data.batch_size * run.world_size
    run.max_steps = max_steps_of(config, len(dataset), samples_per_step)
    lr_scale = samples_per_step if config.optimizer.scale_lr else 1
    models.unet = run.prepare(unet, [p for p in unet.parameters() if p.requires_grad], lr_scale)
    validator = None
    if run.is_main and data.val_video_path:
        validator = Validator(config, models.vae, encoder, run.dir, run.device)
    run.begin(f"{len(clips)} clips, {len(trainable_names)} of {len(list(unet.parameters()))} UNet tensors "
              f"trainable, loss weights {settings.weights}",
              copies={"syncnet_config.yaml": data.syncnet_config_path} if settings.use_syncnet else None)

    batches = run.batches(dataset, data.batch_size, num_workers=data.num_workers)
    while not run.done:
        loss, terms = training_step(models, next(batches), settings, run.draws("unet-step"), run.accelerator.autocast())
        run.accelerator.backward(loss)
        run.optimizer_step()
        run.record("train", loss=run.mean(loss), **{name: run.mean(value) for name, value in terms.items()})
        if validator is not None and run.validation_due():
            video, confidence = validator(run.accelerator.unwrap_model(models.unet), run.step,
                                          run.accelerator.autocast())
            if video is not None:
                run.write(f"step {run.step}: validation video {video}")
            if confidence is not None:  # NaN (a failed validation) is recorded as missing
                run.record("val", sync_conf=confidence)
        run.checkpoint_if_due()
    return run.finish()
