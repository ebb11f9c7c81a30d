"""One trainer core for the SyncNet and the UNet trainers.

A trainer keeps its dataset, its step and its validation; everything a run does around them is
here and is the same for both:

    run = Run(KIND, config, options, resume)            # folder, accelerator, step, history
    model = run.prepare(model, params)                     # AdamW + LR schedule, resumed state, RNGs
    run.begin()                                            # config.yaml, TensorBoard, progress bar
    while not run.done:
        ...forward, run.accelerator.backward(loss)...
        run.optimizer_step()                               # clip, step, LR step, zero grads, step += 1
        run.record("train", loss=...)                      # history + TensorBoard
        if run.validation_due(): run.record("val", ...)
        run.checkpoint_if_due()                            # checkpoint, training state, prune, chart
    run.finish()

A run folder `<data.train_output_dir>/<run_name>/` holds
    config.yaml                          the config as used (overrides applied, renamed keys migrated)
    checkpoints/checkpoint-<step>.pt     official layout {"state_dict", "global_step"} (the SyncNet's
                                         also has the reference's history lists); loads strictly
    checkpoints/training-state-<step>.pt optimiser, LR schedule, grad scaler, RNGs, history: with the
                                         checkpoint of the same step, `--resume_from` continues
                                         exactly; the newest `ckpt.keep_training_states` are kept
    loss_charts/loss_chart-<step>.png    a panel per recorded number (training line, validation points)
    tensorboard/                         the same numbers, through accelerate's TensorBoard tracker

Several processes (`accelerate launch --multi_gpu --num_processes N`, docs/training.md): every
process builds the same model, trains on its share of the global batch (`Run.batches`) with its
rows of the step's random numbers (`Run.draws`), and accelerate averages the gradients; only the
main process (rank 0) writes the run folder (config, checkpoints, training states, charts,
validation results, TensorBoard). The training state holds every process's RNG states.
"""

import logging
import math
import os
import random
import re
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import broadcast_object_list, gather_object
from matplotlib.figure import Figure
from tqdm import tqdm

from latentsync.errors import UserError
from latentsync.io import atomic_output, atomic_save_torch, atomic_write_text
from latentsync.models.checkpoint import load_into, read_state_dict
from latentsync.training.config import OptimizerSection, TrainingConfig, to_container, to_yaml
from latentsync.training.options import TrainOptions
from latentsync.training.state import (CHECKPOINTS_DIR, DEFAULT_RUN_NAME, STATE_PATTERN, IndexBatches, checkpoint_path,
                                       StepDraws, derived_seed, find_state_file, new_run_dir, prune, read_training_state,
                                       rng_state, run_dir_of, set_rng_state, state_path)

logger = logging.getLogger(__name__)

STATE_VERSION = 2  # 2: both trainers' states name their checkpoint instead of holding the weights
WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")  # accelerate's
TENSORBOARD_DIR = "tensorboard"
CHARTS_DIR = "loss_charts"
CHART_DPI = 90
DEVICES = ("auto", "cpu", "cuda", "mps")
WEIGHT_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class RunKind:
    """What differs between the trainers' runs outside their data, step and validation."""

    name: str  # "SyncNet" or "UNet": messages and chart titles
    state_format: str  # the "format" entry of its training-state files
    config_flag: str  # the command-line flag of its config file
    history_in_checkpoint: bool = False  # the reference's SyncNet checkpoints carry the history lists


class History:
    """Numbers by step and phase ("train" every step, "val" at validations), kept as lists named
    `<phase>_<name>_list` (the reference SyncNet checkpoint's names); saved with every training
    state so charts and checkpoints cover the whole run across resumes. A number that could not be
    measured (None, e.g. a failed validation) is kept as NaN: missing, not a score."""

    def __init__(self, lists: Mapping[str, Sequence] | None = None):
        self.lists = {key: list(values) for key, values in (lists or {}).items() if key.endswith("_list")}

    def record(self, phase: str, step: int, **values: float | None) -> None:
        self.lists.setdefault(f"{phase}_step_list", []).append(int(step))
        for name, value in values.items():
            self.lists.setdefault(f"{phase}_{name}_list", []).append(float("nan") if value is None else float(value))

    def series(self, phase: str, name: str) -> list:
        return self.lists.get(f"{phase}_{name}_list", [])

    def names(self, phase: str) -> list[str]:
        """The recorded names of a phase, without "step"."""
        prefix = f"{phase}_"
        return [key[len(prefix):-len("_list")] for key in self.lists
                if key.startswith(prefix) and key != f"{phase}_step_list"]

    def to_dict(self) -> dict[str, list]:
        return {key: list(values) for key, values in self.lists.items()}


@dataclass
class Resume:
    """The training state a run continues from."""

    state_file: Path
    state: dict

    @property
    def run_dir(self) -> Path:
        return run_dir_of(self.state_file)

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / CHECKPOINTS_DIR / self.state["checkpoint"]

    @property
    def step(self) -> int:
        return int(self.state["global_step"])


def find_resume(options: TrainOptions, kind: RunKind) -> tuple[Resume | None, str]:
    """The state `--resume_from` names (None for a new run) and the config file to read: the given
    one, else the resumed run's config.yaml. UserError for an unusable state or a missing checkpoint."""
    if not options.resume_from:
        if not options.config_path:
            raise UserError(f"{kind.config_flag} is required (unless --resume_from names a run to continue)")
        return None, options.config_path
    state_file = find_state_file(options.resume_from, STATE_PATTERN)
    resume = Resume(state_file, read_training_state(state_file, kind.state_format, kind.name, STATE_VERSION))
    if not resume.checkpoint.is_file():
        raise UserError(f"{resume.checkpoint}: checkpoint of the training state {state_file.name} is missing")
    return resume, options.config_path or str(resume.run_dir / "config.yaml")


def check_launch(env=os.environ) -> None:
    """UserError when `accelerate launch --cpu --num_processes N` started this as its only process:
    accelerate 1.x needs mpirun for several CPU processes and otherwise runs one, silently."""
    if (env.get("ACCELERATE_USE_CPU", "").lower() == "true" and "MASTER_ADDR" in env
            and not any(name in env for name in WORLD_SIZE_VARIABLES)):
        raise UserError("accelerate launch --cpu started a single process (several CPU processes need mpirun); "
                        "use accelerate launch --multi_gpu --num_processes N ... --device cpu, which runs N "
                        "processes on the CPU as well")


def make_accelerator(device_option: str | None, precision: str,
                     project_dir: Path | Callable[[PartialState], Path]) -> Accelerator:
    """An `accelerate.Accelerator` on the requested device (cuda:N selects GPU N; no GPU -> the CPU),
    with fp16 only on CUDA and a TensorBoard tracker writing below `project_dir` (or below what
    `project_dir(processes)` returns once the processes are connected)."""
    device = (device_option or "auto").lower()
    if device not in DEVICES and not device.startswith("cuda:"):
        raise UserError(f"--device {device_option!r}: expected auto, cpu, cuda, cuda:N or mps")
    cpu = device == "cpu" or (device.startswith("cuda") and not torch.cuda.is_available())
    if cpu and device != "cpu":
        logger.warning("CUDA was requested but is not available; training on the CPU")
    if device.startswith("cuda:") and torch.cuda.is_available():
        torch.cuda.set_device(torch.device(device))
    if precision == "fp16" and (cpu or not torch.cuda.is_available()):
        precision = "no"
    check_launch()
    folder = project_dir(PartialState(cpu=cpu)) if callable(project_dir) else project_dir
    return Accelerator(mixed_precision=precision, cpu=cpu, log_with="tensorboard", project_dir=str(folder))


def lr_factor(optimizer: OptimizerSection, total_steps: int) -> Callable[[int], float]:
    """The LR multiplier after `step` optimiser steps: a linear warm-up over optimizer.lr_warmup_steps,
    then constant, or for "cosine" half a cosine from 1 down to 0 at the last step."""
    warmup, cosine = optimizer.lr_warmup_steps or 0, optimizer.lr_scheduler == "cosine"

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if not cosine:
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total_steps - warmup))))

    return factor


def save_chart(path: Path, history: History, title: str) -> Path | None:
    """One PNG with a panel per recorded name: the training curve and, where validation recorded the
    same name, its points (matplotlib's Agg figure; temp name, then rename); missing (NaN) values
    are left out. None without data."""
    names = list(dict.fromkeys(history.names("train") + history.names("val")))
    if not names:
        return None
    columns = min(3, len(names))
    rows = (len(names) + columns - 1) // columns
    fig = Figure(figsize=(5 * columns, 3.6 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax, name in zip(axes.flat, names):
        for phase, style in (("train", "-"), ("val", "o-")):
            values = history.series(phase, name)
            points = [(s, v) for s, v in zip(history.series(phase, "step")[-len(values):], values) if math.isfinite(v)]
            if points:
                ax.plot(*zip(*points), style, label=f"{phase} {name}")
        ax.set_xlabel("Step")
        ax.set_ylabel(name)
        ax.legend()
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(title)
    with atomic_output(path) as temp:
        fig.savefig(temp, format="png", dpi=CHART_DPI)
    return path


class Run:
    """One training run: its folder, accelerator (device, precision, TensorBoard), step counter,
    history, optimiser and LR schedule, checkpoints and exact resume."""

    def __init__(self, kind: RunKind, config: TrainingConfig, options: TrainOptions, resume: Resume | None = None):
        if options.num_threads:
            torch.set_num_threads(int(options.num_threads))
        self.kind, self.config, self.resume = kind, config, resume
        self.dir = resume.run_dir if resume else None
        self.accelerator = make_accelerator(options.device, options.mixed_precision or config.run.mixed_precision,
                                            lambda processes: self.dir or self.new_dir(processes, options))
        self.device, self.is_main = self.accelerator.device, self.accelerator.is_main_process
        self.rank, self.world_size = self.accelerator.process_index, self.accelerator.num_processes
        self.dir = Path(self.accelerator.project_dir)
        self.step = resume.step if resume else 0
        self.max_steps = config.run.max_train_steps
        self.history = History(resume.state["history"]) if resume else History()
        self.show_progress = options.show_progress
        self.model = self.optimizer = self.scheduler = self.progress = self.weights = None
        self.params: list[torch.nn.Parameter] = []
        self.validated = False

    def new_dir(self, processes: PartialState, options: TrainOptions) -> Path:
        """The new run's folder: --run_name, else the main process's time stamp (in every process)."""
        name = options.run_name
        if not name and processes.num_processes > 1:
            name = broadcast_object_list([time.strftime(DEFAULT_RUN_NAME) if processes.is_main_process else None],
                                         from_process=0)[0]
        return new_run_dir(self.config.data.train_output_dir, name)

    @property
    def weight_dtype(self) -> torch.dtype:
        """The dtype of frozen networks under the run's mixed precision (float32 without)."""
        return WEIGHT_DTYPES.get(self.accelerator.mixed_precision, torch.float32)

    @property
    def done(self) -> bool:
        return self.step >= self.max_steps

    def load_resumed_weights(self, model: torch.nn.Module) -> bool:
        """Load the resumed run's checkpoint into `model` (strictly); False for a new run."""
        if self.resume is None:
            return False
        load_into(model, read_state_dict(self.resume.checkpoint).state_dict, str(self.resume.checkpoint))
        return True

    def prepare(self, model: torch.nn.Module, params: Sequence[torch.nn.Parameter], lr_scale: float = 1.0,
                weights: torch.nn.Module | None = None):
        """AdamW over `params` (lr x `lr_scale`) with the LR schedule, both restored when resuming;
        accelerate's wrapping; then the RNGs: restored, or seeded with run.seed + rank. Returns the
        wrapped model. Checkpoints hold the state dict of `weights` (default: `model`; a trainer
        whose training forward pass is a wrapper around the model it saves passes the model)."""
        self.params = list(params)
        self.weights = weights
        settings = self.config.optimizer
        optimizer = torch.optim.AdamW(self.params, lr=settings.lr * lr_scale, weight_decay=settings.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(settings, self.max_steps))
        if self.resume is not None:
            optimizer.load_state_dict(self.resume.state["optimizer"])
            self.scheduler.load_state_dict(self.resume.state["lr_scheduler"])
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        scaler = self.accelerator.scaler
        if self.resume is not None:
            if self.resume.state.get("scaler") is not None and scaler is not None:
                scaler.load_state_dict(self.resume.state["scaler"])
            self.restore_rngs(self.resume.state)
            logger.info("resuming %s at step %d", self.dir, self.step)
        else:
            seed = self.config.run.seed + self.rank
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)
        return self.model

    def restore_rngs(self, state: dict) -> None:
        """This process's RNG states of a training state; a resume with another number of processes
        gives rank 0 the saved main-process states and seeds the others from (seed, rank, step)
        (only draws from the global RNGs, e.g. dropout, then differ from the uninterrupted run)."""
        ranks = state.get("rng_ranks") or [state["rng"]]
        if len(ranks) == self.world_size or self.rank == 0:
            set_rng_state(ranks[self.rank] if len(ranks) == self.world_size else state["rng"])
            return
        seed = derived_seed("rng", self.config.run.seed, self.rank, self.step) % 2**32
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def draws(self, name: str) -> StepDraws:
        """The random numbers of the current step: drawn for the global batch from a generator keyed
        by (name, run.seed, step), this process's rows kept (see StepDraws)."""
        return StepDraws.for_step(self.device, name, self.config.run.seed, self.step, self.rank, self.world_size)

    def begin(self, summary: str = "", copies: Mapping[str, str] | None = None) -> None:
        """Start writing: the run folder with config.yaml and `copies` (file name -> source), the
        TensorBoard tracker (continuing after the resumed step) and the progress bar."""
        if self.is_main:
            self.dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.dir / "config.yaml", to_yaml(self.config))
            for name, source in (copies or {}).items():
                with atomic_output(self.dir / name) as temp:
                    shutil.copyfile(source, temp)
            logger.info("run folder %s; device %s, mixed precision %s; %s", self.dir, self.device,
                        self.accelerator.mixed_precision, summary)
        purge = {"purge_step": self.step + 1} if self.resume is not None else {}  # drop events after the state
        self.accelerator.init_trackers(TENSORBOARD_DIR, init_kwargs={"tensorboard": purge})
        self.progress = tqdm(total=self.max_steps, initial=self.step, desc="steps", dynamic_ncols=True,
                             disable=not (self.is_main and self.show_progress))
        if self.world_size > 1:
            self.explain_termination()

    def explain_termination(self) -> None:
        """Under a launcher, SIGTERM means another process of the run ended (the launcher then stops
        the others): say so, with the checkpoint to continue from, before the usual SIGTERM exit."""
        previous = signal.getsignal(signal.SIGTERM)

        def handler(signum, frame):
            states = sorted((int(m.group(1)), p) for p in (self.dir / CHECKPOINTS_DIR).glob("*.pt")
                            if (m := re.search(STATE_PATTERN, p.name)))
            last = (f"the last complete checkpoint is step {states[-1][0]}; continue with --resume_from {self.dir}"
                    if states else "no checkpoint was written yet")
            logger.error("process %d of %d: stopped by SIGTERM, which the launcher sends when another process "
                         "of the run fails (its report names it); %s", self.rank, self.world_size, last)
            signal.signal(signal.SIGTERM, previous)
            if callable(previous):
                previous(signum, frame)
            else:
                os.kill(os.getpid(), signum)

        try:
            signal.signal(signal.SIGTERM, handler)
        except ValueError:  # not the main thread
            pass

    def batches(self, dataset, batch_size: int, per_step: int = 1, num_workers: int = 0):
        """Endless batches of this process's samples, continuing the sequence at the current step."""
        sampler = IndexBatches(batch_size, start=self.step * per_step, rank=self.rank, world_size=self.world_size)
        return iter(torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                                                pin_memory=self.device.type == "cuda"))

    def mean(self, value) -> float:
        """A tensor or number averaged over the processes."""
        tensor = value.detach() if torch.is_tensor(value) else torch.tensor(float(value), device=self.device)
        return self.accelerator.reduce(tensor, "mean").item()

    def optimizer_step(self) -> float:
        """Clip the gradient norm, step the optimiser and the LR schedule (skipped, with a warning, for
        non-finite gradients when no fp16 scaler handles them), clear the gradients and count the
        step. Logs the LR and the norm to TensorBoard; returns the norm."""
        norm = self.accelerator.clip_grad_norm_(self.params, self.config.optimizer.max_grad_norm)
        norm = float(norm) if norm is not None else float("nan")
        if self.accelerator.scaler is None and not math.isfinite(norm):
            logger.warning("step %d: non-finite gradients; optimiser step skipped", self.step + 1)
        else:
            self.optimizer.step()
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.progress.update(1)
        self.accelerator.log({"train/lr": self.scheduler.get_last_lr()[0], "train/grad_norm": norm}, step=self.step)
        return norm

    def record(self, phase: str, **values: float | None) -> None:
        """This step's numbers into the history and TensorBoard (`<phase>/<name>`); a None (not
        measured) is kept as missing in the history and not logged."""
        self.history.record(phase, self.step, **values)
        measured = {name: value for name, value in values.items() if value is not None and math.isfinite(value)}
        self.accelerator.log({f"{phase}/{name}": value for name, value in measured.items()}, step=self.step)
        if phase == "train" and "loss" in measured:
            self.progress.set_postfix(loss=f"{values['loss']:.4f}")
        if phase == "val":
            self.validated = True
            self.write(f"step {self.step}: " + ", ".join(
                f"val {k} {v:.4f}" if k in measured else f"val {k} missing" for k, v in values.items()))

    def due(self, every: int) -> bool:
        """True every `every` steps and at the last step."""
        return self.step % every == 0 or self.step == self.max_steps

    def validation_due(self) -> bool:
        return self.is_main and self.due(self.config.run.validation_steps)

    def checkpoint_if_due(self) -> Path | None:
        """Every ckpt.save_ckpt_steps and at the last step: checkpoint, training state, pruning and the
        chart (the chart also after a validation in between). Returns the checkpoint written."""
        path = None
        if self.due(self.config.ckpt.save_ckpt_steps):
            self.accelerator.wait_for_everyone()
            rngs = gather_object([rng_state()]) if self.world_size > 1 else [rng_state()]
            if self.is_main:
                path = self.save(rngs)
                self.write(f"step {self.step}: saved {path}")
        if self.is_main and (path is not None or self.validated):
            save_chart(self.dir / CHARTS_DIR / f"loss_chart-{self.step}.png", self.history,
                       f"{self.kind.name} training, step {self.step}")
        self.validated = False
        return path

    def save(self, rngs: list[dict]) -> Path:
        """The official checkpoint (fp32 weights of the whole model) and the training state that
        continues it, with every process's RNG states `rngs` (temp names, then renames); older
        training states beyond the kept ones go."""
        model = self.weights if self.weights is not None else self.accelerator.unwrap_model(self.model)
        weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        extra = self.history.to_dict() if self.kind.history_in_checkpoint else {}
        checkpoint = checkpoint_path(self.dir, self.step)
        atomic_save_torch({"state_dict": weights, "global_step": self.step, **extra}, checkpoint)
        atomic_save_torch(self.training_state(checkpoint.name, rngs), state_path(self.dir, self.step))
        prune(checkpoint.parent, STATE_PATTERN, self.config.ckpt.keep_training_states)
        return checkpoint

    def training_state(self, checkpoint_name: str, rngs: list[dict]) -> dict:
        scaler = self.accelerator.scaler
        return {"format": self.kind.state_format, "version": STATE_VERSION, "global_step": self.step,
                "checkpoint": checkpoint_name, "optimizer": self.optimizer.state_dict(),
                "lr_scheduler": self.scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "rng": rngs[0], "rng_ranks": rngs, "history": self.history.to_dict(),
                "config": to_container(self.config)}

    def write(self, message: str) -> None:
        """A line above the progress bar (or to the log before it exists)."""
        if self.progress is not None:
            self.progress.write(message)
        else:
            logger.info(message)

    def finish(self) -> Path:
        """Close the progress bar and the trackers once every process is done; returns the run folder."""
        if self.progress is not None:
            self.progress.close()
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()
        return self.dir
