"""Training StableSyncNet, the lip-sync discriminator (SPEC 6.1 and 8).

    python -m scripts.train_syncnet --config_path configs/syncnet/syncnet_16_pixel_attn.yaml

Reading order: `train` is the whole loop; everything above it is a small helper. One optimiser
step = `data.gradient_accumulation_steps` micro-batches of `data.batch_size` samples (per
process); the loss is the mean BCE of the cosine similarity against the in-sync label.

A run folder `<train_output_dir>/<run_name>/` holds
    config.yaml                          the config as used (overrides applied)
    checkpoints/checkpoint-<step>.pt     official format {state_dict, global_step, *_list}
    checkpoints/training-state-<step>.pt weights + optimiser + LR scheduler + grad scaler + RNGs
                                         + loss history: `--resume_from` continues exactly
    loss_charts/loss_chart-<step>.png    train/val loss and accuracy curves
    tensorboard/                         TensorBoard event files

Differences from the reference (SPEC 12.1 items 1 and 12): any device (CPU included; fp16
autocast and the gradient scaler only on CUDA), validation runs exactly `num_val_samples`
samples, the optimiser state is saved, and samples are keyed by their index so resuming
reproduces the uninterrupted run.
"""

import contextlib
import logging
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from latentsync.data.syncnet_dataset import SyncNetDataset, videos_from_config
from latentsync.errors import UserError
from latentsync.models.checkpoint import load_into, read_state_dict
from latentsync.models.stable_syncnet import StableSyncNet, sync_accuracy, sync_loss
from latentsync.training import state as state_lib
from latentsync.training.state import (IndexBatches, atomic_save, find_state_file, new_run_dir, prune,
                                       load_run_config, read_training_state, rng_state, run_dir_of, save_figure, set_rng_state)

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint-{step}.pt"
STATE_NAME = "training-state-{step}.pt"
STATE_PATTERN = r"training-state-(\d+)\.pt$"
STATE_FORMAT = "latentsync-syncnet-training-state"
STATE_VERSION = 1
VAL_SEED_OFFSET = 1_000_003  # validation samples never repeat the training draws
VAL_FRAMES_PER_BATCH = 640  # validation batch = min(640 // num_frames, batch_size) (SPEC 8)
REQUIRED_KEYS = (
    "model", "data.batch_size", "data.num_frames", "data.resolution", "data.lower_half",
    "data.train_output_dir", "data.num_val_samples", "optimizer.lr", "optimizer.max_grad_norm",
    "run.max_train_steps", "run.validation_steps", "run.seed", "ckpt.save_ckpt_steps",
)


@dataclass
class TrainOptions:
    """Command-line choices; None means "take it from the config"."""

    config_path: str
    train_output_dir: str | None = None
    max_train_steps: int | None = None
    device: str | None = None  # auto (default), cpu, cuda, mps
    resume_from: str | None = None  # run folder or training-state file
    run_name: str | None = None  # default train-YYYY_MM_DD-HH_MM_SS
    mixed_precision: str | None = None  # no, fp16, bf16 (default: config, fp16 only on CUDA)
    num_threads: int | None = None  # torch CPU threads (1 is much faster on a busy machine)
    overrides: list[str] = field(default_factory=list)  # OmegaConf dot-list, e.g. data.batch_size=8


@dataclass
class History:
    """Per-step train metrics and per-validation val metrics (kept in checkpoints for charts)."""

    train_step_list: list[int] = field(default_factory=list)
    train_loss_list: list[float] = field(default_factory=list)
    train_acc_list: list[float] = field(default_factory=list)
    val_step_list: list[int] = field(default_factory=list)
    val_loss_list: list[float] = field(default_factory=list)
    val_acc_list: list[float] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# config


def load_config(options: TrainOptions) -> DictConfig:
    """The YAML config with command-line overrides applied; UserError for anything unusable."""
    config = load_run_config(options.config_path, options.overrides, "model, ckpt, data, optimizer, run",
                             REQUIRED_KEYS, options.train_output_dir, options.max_train_steps)
    if config.data.get("latent_space", False):
        raise UserError(f"{Path(options.config_path)}: data.latent_space: true (VAE-latent SyncNet) is not supported by this trainer")
    return config


def check_model_fits(config: DictConfig, config_path: str) -> None:
    """Fail early, with the config named, when the model cannot take this data's input shapes."""
    frames, mel = input_shapes(config)
    try:
        with torch.device("meta"):
            model = StableSyncNet.from_config(config.model)
            vision, audio = model(torch.zeros(1, *frames), torch.zeros(1, *mel))
    except (RuntimeError, ValueError, TypeError) as e:
        raise UserError(f"{config_path}: model does not accept frames {list(frames)} and mel {list(mel)} "
                        f"({str(e).splitlines()[0]})") from None
    if vision.shape != audio.shape:
        raise UserError(f"{config_path}: visual embedding {list(vision.shape[1:])} and audio embedding "
                        f"{list(audio.shape[1:])} differ; check the encoders' channels and downsample factors")


def input_shapes(config: DictConfig) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Shapes of one sample's frames `[3F, H, W]` and mel `[1, 80, T]`."""
    from latentsync.audio import mel_window_length

    num_frames, res = int(config.data.num_frames), int(config.data.resolution)
    height = res // 2 if config.data.lower_half else res
    return (3 * num_frames, height, res), (1, 80, mel_window_length(num_frames, config.data.get("video_fps", 25)))


def build_datasets(config: DictConfig) -> tuple[SyncNetDataset, SyncNetDataset | None]:
    """Training and (if configured) validation datasets; UserError if a list or folder is missing."""
    data = config.data
    options = dict(num_frames=data.num_frames, resolution=data.resolution, lower_half=data.lower_half,
                   mel_cache_dir=data.get("audio_mel_cache_dir") or None, fps=data.get("video_fps", 25),
                   sample_rate=data.get("audio_sample_rate", 16000),
                   cache_frames=bool(data.get("cache_frames", False)))
    train_videos = videos_from_config(data.get("train_fileslist"), data.get("train_data_dir"))
    if train_videos is None:
        raise UserError("config: no training data (set data.train_fileslist or data.train_data_dir)")
    train_set = SyncNetDataset(train_videos, seed=config.run.seed, **options)
    val_videos = videos_from_config(data.get("val_fileslist"), data.get("val_data_dir"))
    if val_videos is None:
        logger.warning("no validation data configured (data.val_fileslist / data.val_data_dir): skipping validation")
        return train_set, None
    val_set = SyncNetDataset(val_videos, seed=config.run.seed + VAL_SEED_OFFSET, length=int(data.num_val_samples), **options)
    return train_set, val_set


def make_accelerator(config: DictConfig, options: TrainOptions):
    """An `accelerate.Accelerator` on the requested device; mixed precision from the options or
    the config (run.mixed_precision, else fp16 if run.mixed_precision_training), fp16 only on CUDA."""
    default = config.run.get("mixed_precision") or ("fp16" if config.run.get("mixed_precision_training") else "no")
    return state_lib.make_accelerator(options.device, options.mixed_precision, default)


# --------------------------------------------------------------------------------------------
# data loading


def make_loader(dataset, batch_sampler, num_workers: int, pin_memory: bool):
    return torch.utils.data.DataLoader(dataset, batch_sampler=batch_sampler, num_workers=num_workers,
                                       pin_memory=pin_memory, persistent_workers=False)


# --------------------------------------------------------------------------------------------
# run folder, checkpoints, resume


def save_checkpoints(run_dir: Path, step: int, model, optimizer, scheduler, scaler, history: History,
                     config: DictConfig, keep_states: int) -> Path:
    """Write the official checkpoint and the full training state (temp name, then rename)."""
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    folder = run_dir / "checkpoints"
    checkpoint = folder / CHECKPOINT_NAME.format(step=step)
    atomic_save({"state_dict": weights, "global_step": step, **asdict(history)}, checkpoint)
    state = {
        "format": STATE_FORMAT, "version": STATE_VERSION, "global_step": step, "state_dict": weights,
        "optimizer": optimizer.state_dict(), "lr_scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None, "rng": rng_state(),
        "history": asdict(history), "config": OmegaConf.to_container(config, resolve=True),
    }
    atomic_save(state, folder / STATE_NAME.format(step=step))
    prune(folder, STATE_PATTERN, keep_states)
    return checkpoint


def load_initial_weights(model, ckpt_path: str) -> tuple[int, History]:
    """`ckpt.resume_ckpt_path` as the reference uses it: weights, step and history; fresh optimiser."""
    checkpoint = read_state_dict(ckpt_path)
    load_into(model, checkpoint.state_dict, ckpt_path)
    raw = torch.load(ckpt_path, map_location="cpu", weights_only=True) if ckpt_path.endswith(".pt") else {}
    history = History(**{k: list(raw[k]) for k in asdict(History()) if isinstance(raw, dict) and k in raw})
    return checkpoint.global_step, history


# --------------------------------------------------------------------------------------------
# validation and charts


@torch.no_grad()
def evaluate(model, loader, accelerator, num_samples: int) -> tuple[float, float]:
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
    return loss_sum / max(seen, 1), correct / max(seen, 1)


def save_chart(run_dir: Path, step: int, history: History) -> Path:
    """PNG with the loss curves (left) and accuracy curves (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.5))
    ax_loss.plot(history.train_step_list, history.train_loss_list, label="Train loss", alpha=0.7)
    ax_loss.plot(history.val_step_list, history.val_loss_list, "o-", label="Val loss")
    ax_acc.plot(history.train_step_list, history.train_acc_list, label="Train accuracy", alpha=0.7)
    ax_acc.plot(history.val_step_list, history.val_acc_list, "o-", label="Val accuracy")
    ax_acc.axhline(0.5, color="grey", linestyle=":", label="chance")
    for ax, name in ((ax_loss, "Loss"), (ax_acc, "Accuracy")):
        ax.set_xlabel("Step")
        ax.set_ylabel(name)
        ax.legend()
        ax.grid(alpha=0.3)
    return save_figure(fig, run_dir / "loss_charts" / f"loss_chart-{step}.png", f"SyncNet training, step {step}",
                       dpi=100)


# --------------------------------------------------------------------------------------------
# the training loop


def train(options: TrainOptions) -> Path:
    """Train (or resume) a SyncNet run; returns the run folder."""
    config = load_config(options)
    if options.num_threads:
        torch.set_num_threads(int(options.num_threads))
    check_model_fits(config, options.config_path)
    train_set, val_set = build_datasets(config)  # before any folder is made: bad lists fail first
    accelerator = make_accelerator(config, options)
    main = accelerator.is_main_process
    seed = int(config.run.seed)
    batch_size, accum = int(config.data.batch_size), int(config.data.get("gradient_accumulation_steps", 1))
    max_steps = int(config.run.max_train_steps)

    # model, optimiser, constant LR with optional linear warm-up
    torch.manual_seed(seed)  # same initial weights on every process
    model = StableSyncNet.from_config(config.model)
    if config.run.get("gradient_checkpointing", False):
        model.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(config.optimizer.lr))
    warmup = int(config.optimizer.get("lr_warmup_steps", 0) or 0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0)

    # new run, or continue one
    global_step, history, state = 0, History(), None
    if options.resume_from:
        state_path = find_state_file(options.resume_from, STATE_PATTERN)
        state = read_training_state(state_path, STATE_FORMAT, "SyncNet")
        run_dir = run_dir_of(state_path)
        load_into(model, state["state_dict"], str(state_path))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["lr_scheduler"])
        global_step, history = int(state["global_step"]), History(**state["history"])
        logger.info("resuming %s at step %d", run_dir, global_step)
    else:
        run_dir = new_run_dir(config.data.train_output_dir, options.run_name)
        if config.ckpt.get("resume_ckpt_path"):
            global_step, history = load_initial_weights(model, str(config.ckpt.resume_ckpt_path))
    model, optimizer = accelerator.prepare(model, optimizer)
    scaler = accelerator.scaler
    if state is not None:
        if state["scaler"] is not None and scaler is not None:
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
    else:
        random.seed(seed + accelerator.process_index)
        np.random.seed(seed + accelerator.process_index)
        torch.manual_seed(seed + accelerator.process_index)

    writer = None
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(config, run_dir / "config.yaml")
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=global_step if state is not None else None)
        logger.info("run folder %s; %d training clips, %s validation clips; device %s, mixed precision %s",
                    run_dir, len(train_set.paths), len(val_set.paths) if val_set else "no", accelerator.device,
                    accelerator.mixed_precision)

    workers = int(config.data.get("num_workers", 0))
    pin = accelerator.device.type == "cuda"
    sampler = IndexBatches(batch_size, start=global_step * accum, rank=accelerator.process_index,
                           world_size=accelerator.num_processes)
    batches = iter(make_loader(train_set, sampler, workers, pin))
    val_loader = None
    if val_set is not None:
        num_val = int(config.data.num_val_samples)
        val_batch = min(VAL_FRAMES_PER_BATCH // int(config.data.num_frames), batch_size)
        val_loader = torch.utils.data.DataLoader(val_set, batch_size=max(1, val_batch), shuffle=False,
                                                 num_workers=workers, pin_memory=pin)
    validation_steps, save_steps = int(config.run.validation_steps), int(config.ckpt.save_ckpt_steps)
    keep_states = int(config.ckpt.get("keep_training_states", 1))
    max_grad_norm = float(config.optimizer.max_grad_norm)

    model.train()
    progress = tqdm(total=max_steps, initial=global_step, desc="steps", disable=not main, dynamic_ncols=True)
    while global_step < max_steps:
        step_loss = step_acc = 0.0
        for micro in range(accum):
            batch = next(batches)
            frames, mel, label = (batch[k].to(accelerator.device, non_blocking=pin) for k in ("frames", "mel", "label"))
            # only the last micro-batch of a step all-reduces gradients across processes
            sync = contextlib.nullcontext() if micro == accum - 1 else accelerator.no_sync(model)
            with sync:
                with accelerator.autocast():
                    vision, audio = model(frames, mel)
                loss = sync_loss(vision, audio, label) / accum  # fp32
                accelerator.backward(loss)
            step_loss += accelerator.reduce(loss.detach(), "mean").item()
            step_acc += accelerator.reduce(sync_accuracy(vision, audio, label), "mean").item() / accum
        accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        global_step += 1

        history.train_step_list.append(global_step)
        history.train_loss_list.append(step_loss)
        history.train_acc_list.append(step_acc)
        progress.update(1)
        progress.set_postfix(loss=f"{step_loss:.4f}")
        if writer is not None:
            writer.add_scalar("train/loss", step_loss, global_step)
            writer.add_scalar("train/accuracy", step_acc, global_step)
            writer.add_scalar("train/lr", scheduler.get_last_lr()[0], global_step)

        last = global_step == max_steps
        if main and val_loader is not None and (global_step % validation_steps == 0 or last):
            val_loss, val_acc = evaluate(accelerator.unwrap_model(model), val_loader, accelerator, num_val)
            history.val_step_list.append(global_step)
            history.val_loss_list.append(val_loss)
            history.val_acc_list.append(val_acc)
            writer.add_scalar("val/loss", val_loss, global_step)
            writer.add_scalar("val/accuracy", val_acc, global_step)
            progress.write(f"step {global_step}: val loss {val_loss:.4f}, val accuracy {val_acc:.3f}")
            if global_step % save_steps and not last:
                save_chart(run_dir, global_step, history)
        if global_step % save_steps == 0 or last:
            accelerator.wait_for_everyone()
            if main:
                path = save_checkpoints(run_dir, global_step, accelerator.unwrap_model(model), optimizer,
                                        scheduler, scaler, history, config, keep_states)
                save_chart(run_dir, global_step, history)
                progress.write(f"step {global_step}: saved {path}")
    progress.close()
    if writer is not None:
        writer.close()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return run_dir
