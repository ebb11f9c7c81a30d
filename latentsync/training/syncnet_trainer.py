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

from latentsync.data.syncnet_dataset import SyncNetDataset, videos_from_config
from latentsync.models.checkpoint import load_into, read_state_dict
from latentsync.models.stable_syncnet import StableSyncNet, contrastive_sync_loss, sync_accuracy, sync_loss
from latentsync.training.config import load_training_config
from latentsync.training.core import History, Run, RunKind, find_resume
from latentsync.training.options import TrainOptions
from latentsync.training.state import read_torch_dict
from latentsync.training.syncnet_config import SyncNetConfig

logger = logging.getLogger(__name__)

KIND = RunKind("SyncNet", "latentsync-syncnet-training-state", "--config_path", history_in_checkpoint=True)
VAL_SEED_OFFSET = 1_000_003  # validation samples never repeat the training draws
VAL_FRAMES_PER_BATCH = 640  # validation batch = min(640 // num_frames, batch_size), as the reference


def load_config(config_path: str, options: TrainOptions) -> SyncNetConfig:
    """The YAML config with command-line overrides applied, checked; UserError for anything unusable."""
    return load_training_config(SyncNetConfig, config_path, options.overrides, options.train_output_dir,
                                options.max_train_steps)


def build_datasets(config: SyncNetConfig) -> tuple[SyncNetDataset, SyncNetDataset | None]:
    """Training and (if configured) validation datasets; UserError if a list or folder is missing."""
    data = config.data
    options = dict(num_frames=data.num_frames, resolution=data.resolution, lower_half=data.lower_half,
                   mel_cache_dir=data.audio_mel_cache_dir or None, fps=data.video_fps,
                   sample_rate=data.audio_sample_rate, cache_frames=data.cache_frames)
    train_videos = videos_from_config(data.train_fileslist, data.train_data_dir, required=True)
    train_set = SyncNetDataset(train_videos, seed=config.run.seed, windows_per_clip=data.windows_per_clip, **options)
    val_videos = videos_from_config(data.val_fileslist, data.val_data_dir, "val")
    if val_videos is None:
        logger.warning("no validation data configured (data.val_fileslist / data.val_data_dir): skipping validation")
        return train_set, None
    val_set = SyncNetDataset(val_videos, seed=config.run.seed + VAL_SEED_OFFSET, length=data.num_val_samples,
                             **options)
    return train_set, val_set


def load_initial_weights(model: torch.nn.Module, path: str) -> tuple[int, History]:
    """`ckpt.resume_ckpt_path` as the reference uses it: weights, step and history; fresh optimiser."""
    checkpoint = read_state_dict(path)
    load_into(model, checkpoint.state_dict, path)
    raw = read_torch_dict(path) if path.endswith(".pt") else {}
    return checkpoint.global_step, History(raw)


def training_step(run: Run, model, batches, accum: int, contrastive: tuple[float, float] = (0.0, 1.0)) -> dict[str, float]:
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
    config = load_config(config_path, options)
    data, run_config = config.data, config.run
    contrastive = (run_config.contrastive_loss_weight, run_config.contrastive_temperature)
    train_set, val_set = build_datasets(config)  # before any folder is made: bad lists fail first
    run = Run(KIND, config, options, resume)
    accum = data.gradient_accumulation_steps

    torch.manual_seed(run_config.seed)  # same initial weights on every process
    model = StableSyncNet.from_config(config.model)
    if run_config.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    if not run.load_resumed_weights(model) and config.ckpt.resume_ckpt_path:
        run.step, run.history = load_initial_weights(model, config.ckpt.resume_ckpt_path)
    model = run.prepare(model, model.parameters())
    run.begin(f"{len(train_set.paths)} training clips, {len(val_set.paths) if val_set else 'no'} validation clips")

    batches = run.batches(train_set, data.batch_size, per_step=accum, num_workers=data.num_workers)
    val_loader = None
    if val_set is not None:
        val_batch = max(1, min(VAL_FRAMES_PER_BATCH // data.num_frames, data.batch_size))
        val_loader = torch.utils.data.DataLoader(val_set, batch_size=val_batch, shuffle=False,
                                                 num_workers=data.num_workers, pin_memory=run.device.type == "cuda")
    model.train()
    while not run.done:
        losses = training_step(run, model, batches, accum, contrastive)
        run.optimizer_step()
        run.record("train", **losses)
        if val_loader is not None and run.validation_due():
            run.record("val", **evaluate(run.accelerator.unwrap_model(model), val_loader, run.accelerator,
                                         data.num_val_samples))
        run.checkpoint_if_due()
    return run.finish()
