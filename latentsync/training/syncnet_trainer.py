"""Training StableSyncNet, the lip-sync discriminator.

    python -m scripts.train_syncnet --config_path configs/syncnet/syncnet_16_pixel_attn.yaml

Reading order: `train` is the whole loop; the run folder, checkpoints, exact resume, LR
schedule, TensorBoard and charts are the shared core (latentsync/training/core.py). One
optimiser step = `data.gradient_accumulation_steps` micro-batches of `data.batch_size` samples
(per process); the loss is the mean BCE of the cosine similarity against the in-sync label.
The official checkpoint also carries the history lists (`train_step_list`, `train_loss_list`,
`train_acc_list`, `val_step_list`, `val_loss_list`, `val_acc_list`), as the reference's do.

Differences from the reference: any device (CPU included; fp16 autocast and the gradient scaler
only on CUDA), validation runs exactly `num_val_samples` samples, the optimiser state is saved,
and samples are keyed by their index so resuming reproduces the uninterrupted run.
"""

import contextlib
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from latentsync.audio import mel_window_length
from latentsync.constants import MODEL_FPS, SAMPLE_RATE
from latentsync.data.syncnet_dataset import SyncNetDataset, videos_from_config
from latentsync.errors import UserError
from latentsync.models.checkpoint import load_into, read_state_dict
from latentsync.models.stable_syncnet import StableSyncNet, contrastive_sync_loss, sync_accuracy, sync_loss
from latentsync.training.config import load_training_config
from latentsync.training.core import History, Run, RunKind, find_resume
from latentsync.training.options import TrainOptions
from latentsync.training.state import read_torch_dict

logger = logging.getLogger(__name__)

KIND = RunKind("SyncNet", "latentsync-syncnet-training-state", "--config_path", history_in_checkpoint=True)
VAL_SEED_OFFSET = 1_000_003  # validation samples never repeat the training draws
VAL_FRAMES_PER_BATCH = 640  # validation batch = min(640 // num_frames, batch_size), as the reference
MEL_BINS = 80
REQUIRED_KEYS = ("data.num_frames", "data.resolution", "data.lower_half", "data.num_val_samples")
DEFAULT_TEMPERATURE = 0.1  # run.contrastive_temperature: cosines in [0, 1] become logits in [0, 10]


def load_config(config_path: str, options: TrainOptions):
    """The YAML config with command-line overrides applied and its RunSettings; UserError for anything unusable."""
    config, settings = load_training_config(config_path, options.overrides, "model, ckpt, data, optimizer, run",
                                            REQUIRED_KEYS, options.train_output_dir, options.max_train_steps)
    if config.data.get("latent_space", False):
        raise UserError(f"{Path(config_path)}: data.latent_space: true (VAE-latent SyncNet) is not supported by "
                        "this trainer")
    data = config.data
    check_syncnet_input(config.model, int(data.num_frames), int(data.resolution), bool(data.lower_half),
                        config_path, fps=float(data.get("video_fps", MODEL_FPS)))
    return config, settings


def check_syncnet_input(model_config, num_frames: int, resolution: int, lower_half: bool, where,
                        fps: float = MODEL_FPS) -> None:
    """Fail early, naming `where`, when a SyncNet of `model_config` cannot take `num_frames` frames
    of `resolution` px (lower half or whole) with their mel window, or when its visual and audio
    embeddings differ in shape (a meta-device forward pass: no memory, no weights)."""
    height = resolution // 2 if lower_half else resolution
    frames = (1, 3 * num_frames, height, resolution)
    mel = (1, 1, MEL_BINS, mel_window_length(num_frames, fps))
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


def build_datasets(config: DictConfig) -> tuple[SyncNetDataset, SyncNetDataset | None]:
    """Training and (if configured) validation datasets; UserError if a list or folder is missing."""
    data = config.data
    options = dict(num_frames=data.num_frames, resolution=data.resolution, lower_half=data.lower_half,
                   mel_cache_dir=data.get("audio_mel_cache_dir") or None, fps=data.get("video_fps", MODEL_FPS),
                   sample_rate=data.get("audio_sample_rate", SAMPLE_RATE),
                   cache_frames=bool(data.get("cache_frames", False)))
    train_videos = videos_from_config(data.get("train_fileslist"), data.get("train_data_dir"))
    if train_videos is None:
        raise UserError("config: no training data (set data.train_fileslist or data.train_data_dir)")
    train_set = SyncNetDataset(train_videos, seed=config.run.seed, windows_per_clip=int(data.get("windows_per_clip", 1)),
                               **options)
    val_videos = videos_from_config(data.get("val_fileslist"), data.get("val_data_dir"))
    if val_videos is None:
        logger.warning("no validation data configured (data.val_fileslist / data.val_data_dir): skipping validation")
        return train_set, None
    val_set = SyncNetDataset(val_videos, seed=config.run.seed + VAL_SEED_OFFSET, length=int(data.num_val_samples),
                             **options)
    return train_set, val_set


def load_initial_weights(model, ckpt_path: str) -> tuple[int, History]:
    """`ckpt.resume_ckpt_path` as the reference uses it: weights, step and history; fresh optimiser."""
    checkpoint = read_state_dict(ckpt_path)
    load_into(model, checkpoint.state_dict, ckpt_path)
    raw = read_torch_dict(ckpt_path) if ckpt_path.endswith(".pt") else {}
    return checkpoint.global_step, History(raw)


def contrastive_settings(config: DictConfig) -> tuple[float, float]:
    """(weight, temperature) of the optional InfoNCE term (`run.contrastive_loss_weight`, default 0:
    the reference's BCE only; `run.contrastive_temperature`); UserError for unusable values."""
    weight = float(config.run.get("contrastive_loss_weight", 0.0) or 0.0)
    temperature = float(config.run.get("contrastive_temperature", DEFAULT_TEMPERATURE))
    if weight < 0 or temperature <= 0:
        raise UserError(f"config: run.contrastive_loss_weight must be >= 0 and run.contrastive_temperature > 0 "
                        f"(got {weight}, {temperature})")
    return weight, temperature


def train_step(run: Run, model, batches, accum: int, contrastive: tuple[float, float] = (0.0, 1.0)) -> dict[str, float]:
    """Forward and backward passes over `accum` micro-batches (gradients all-reduced on the last
    one only); their loss (sum of micro-losses / accum) and accuracy, averaged over processes.
    The loss is the BCE plus, when `contrastive` = (weight, temperature) has a weight, that
    weight times the batch InfoNCE (`contrastive_sync_loss`)."""
    accelerator, loss_sum, acc_sum = run.accelerator, 0.0, 0.0
    weight, temperature = contrastive
    for micro in range(accum):
        batch = next(batches)
        frames, mel, label = (batch[k].to(run.device) for k in ("frames", "mel", "label"))
        sync = contextlib.nullcontext() if micro == accum - 1 else accelerator.no_sync(model)
        with sync:
            with accelerator.autocast():
                vision, audio = model(frames, mel)
            loss = sync_loss(vision, audio, label)  # fp32
            if weight > 0:
                loss = loss + weight * contrastive_sync_loss(vision, audio, label, temperature)
            loss = loss / accum
            accelerator.backward(loss)
        loss_sum += run.mean(loss)
        acc_sum += run.mean(sync_accuracy(vision, audio, label)) / accum
    return {"loss": loss_sum, "acc": acc_sum}


@torch.no_grad()
def evaluate(model, loader, accelerator, num_samples: int) -> dict[str, float]:
    """Mean BCE loss and accuracy over exactly `num_samples` validation samples."""
    was_training = model.training
    model.eval()
    loss_sum = correct = seen = 0.0
    for batch in loader:
        frames, mel, label = (batch[k].to(accelerator.device) for k in ("frames", "mel", "label"))
        with accelerator.autocast():
            vision, audio = model(frames, mel)
        n = label.shape[0]
        loss_sum += sync_loss(vision, audio, label).item() * n
        correct += sync_accuracy(vision, audio, label).item() * n
        seen += n
        if seen >= num_samples:
            break
    model.train(was_training)
    return {"loss": loss_sum / max(seen, 1), "acc": correct / max(seen, 1)}


def train(options: TrainOptions) -> Path:
    """Train (or resume) a SyncNet run; returns the run folder."""
    resume, config_path = find_resume(options, KIND)
    config, settings = load_config(config_path, options)
    contrastive = contrastive_settings(config)
    train_set, val_set = build_datasets(config)  # before any folder is made: bad lists fail first
    run = Run(KIND, config, settings, options, resume)
    data = config.data
    accum, workers = int(data.get("gradient_accumulation_steps", 1)), int(data.get("num_workers", 0))

    torch.manual_seed(settings.seed)  # same initial weights on every process
    model = StableSyncNet.from_config(config.model)
    if settings.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    if not run.load_resumed_weights(model) and config.ckpt.get("resume_ckpt_path"):
        run.step, run.history = load_initial_weights(model, str(config.ckpt.resume_ckpt_path))
    model = run.prepare(model, model.parameters())
    run.begin(f"{len(train_set.paths)} training clips, {len(val_set.paths) if val_set else 'no'} validation clips")

    batches = run.batches(train_set, settings.batch_size, per_step=accum, num_workers=workers)
    val_loader = None
    if val_set is not None:
        val_batch = max(1, min(VAL_FRAMES_PER_BATCH // int(data.num_frames), settings.batch_size))
        val_loader = torch.utils.data.DataLoader(val_set, batch_size=val_batch, shuffle=False, num_workers=workers,
                                                 pin_memory=run.device.type == "cuda")
    model.train()
    while not run.done:
        losses = train_step(run, model, batches, accum, contrastive)
        run.optimizer_step()
        run.record("train", **losses)
        if val_loader is not None and run.validation_due():
            run.record("val", **evaluate(run.accelerator.unwrap_model(model), val_loader, run.accelerator,
                                         int(data.num_val_samples)))
        run.checkpoint_if_due()
    return run.finish()
