"""The files and random state of a resumable run: run folders, RNG snapshots,
finding and reading the state file to resume from, pruning old states, index batches and
per-step random draws.

Several processes (docs/training.md, "Several processes"): the samples of step k are the global
batch k of one sequence of sample indices, split across the processes (`IndexBatches`), and
the random numbers of step k are drawn for the whole global batch from one generator keyed by
(seed, k), each process keeping its own rows (`StepDraws`). So N processes with batch B draw
and see exactly what one process with batch N x B does.

Used through `latentsync/training/core.py` by both trainers (nothing here knows a model).
"""

import hashlib
import os
import random
import re
import time
from pathlib import Path

import numpy as np
import torch

from latentsync.errors import UserError
from latentsync.io import load_torch_file

CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_NAME = "checkpoint-{step}.pt"  # the official {"state_dict", "global_step"} file
STATE_NAME = "training-state-{step}.pt"  # optimiser, LR schedule, scaler, RNGs, history
STATE_PATTERN = r"^training-state-(\d+)\.pt$"
DEFAULT_RUN_NAME = "train-%Y_%m_%d-%H_%M_%S"  # time.strftime format of a run without --run_name


def checkpoint_path(run_dir: str | os.PathLike, step: int) -> Path:
    """`<run>/checkpoints/checkpoint-<step>.pt`, the official checkpoint of both trainers."""
    return Path(run_dir) / CHECKPOINTS_DIR / CHECKPOINT_NAME.format(step=step)


def state_path(run_dir: str | os.PathLike, step: int) -> Path:
    """`<run>/checkpoints/training-state-<step>.pt`, what `--resume_from` continues."""
    return Path(run_dir) / CHECKPOINTS_DIR / STATE_NAME.format(step=step)


def new_run_dir(train_output_dir: str | os.PathLike, run_name: str | None) -> Path:
    """`<train_output_dir>/<run_name or train-YYYY_MM_DD-HH_MM_SS>`; UserError if it already has checkpoints."""
    name = run_name or time.strftime(DEFAULT_RUN_NAME)
    run_dir = Path(train_output_dir) / name
    if (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()):
        raise UserError(f"{run_dir}: run folder already has checkpoints; use --resume_from {run_dir} "
                        "or another --run_name")
    return run_dir


class IndexBatches(torch.utils.data.Sampler):
    """Endless batches of sample indices: batch k of process r holds (k*world + r)*B ... +B-1,
    so the processes' batches k together are the global batch k*world*B ... +world*B-1 (what
    one process with batch world*B draws) and never overlap.

    Starting at batch `start` after a resume continues the exact sample sequence.
    """

    def __init__(self, batch_size: int, start: int = 0, rank: int = 0, world_size: int = 1):
        self.batch_size, self.start, self.rank, self.world_size = batch_size, start, rank, world_size

    def __iter__(self):
        k = self.start
        while True:
            first = (k * self.world_size + self.rank) * self.batch_size
            yield list(range(first, first + self.batch_size))
            k += 1


def rng_state() -> dict:
    """Python, NumPy and torch RNG states in a form `torch.load(weights_only=True)` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": list_state(random.getstate()),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def list_state(state):
    """random.getstate() as nested lists/ints (tuples survive weights_only loading too, but be plain)."""
    version, internal, gauss = state
    return [version, list(internal), gauss]


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def derived_seed(*parts) -> int:
    """A 63-bit seed from any parts (e.g. run seed, rank, step), the same on every machine."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def step_generator(device: torch.device, *parts) -> torch.Generator:
    """A fresh generator for one training step: resuming at step k redraws exactly step k's noise."""
    generator = torch.Generator(device=device)
    generator.manual_seed(derived_seed(*parts))
    return generator


class StepDraws:
    """The random numbers of one training step, the same whatever the number of processes: each
    draw is made for the global batch (`world_size` x this process's rows) from one generator
    keyed by (name, seed, step), and this process keeps rows rank x n ... (rank + 1) x n - 1 of
    it. With one process this is the plain draw (the generator keys have a 0 where they used to
    have the rank, so one-process runs draw what they always did). The cost: every process
    draws the random numbers of the whole global batch (noise-sized tensors, cheap next to a
    forward pass)."""

    def __init__(self, generator: torch.Generator, rank: int = 0, world_size: int = 1):
        self.generator, self.rank, self.world_size = generator, rank, world_size

    @classmethod
    def for_step(cls, device: torch.device, name: str, seed: int, step: int, rank: int = 0,
                 world_size: int = 1) -> "StepDraws":
        """The draws of training step `step` of process `rank` of `world_size`."""
        return cls(step_generator(device, name, seed, 0, step), rank, world_size)

    @classmethod
    def of(cls, draws: "StepDraws | torch.Generator") -> "StepDraws":
        """`draws` itself, or a plain generator's draws (one process)."""
        return draws if isinstance(draws, StepDraws) else cls(draws)

    def local(self, draw, shape) -> torch.Tensor:
        """`draw(global shape)` cut to this process's rows, for a `shape` whose first dimension is
        this process's (batch-major: a flattened (batch frame) dimension works too)."""
        rows = shape[0]
        if self.world_size == 1:
            return draw(tuple(shape))
        full = draw((rows * self.world_size, *shape[1:]))
        return full[self.rank * rows:(self.rank + 1) * rows]

    def randn(self, shape, device=None, dtype=torch.float32) -> torch.Tensor:
        """Standard normal numbers of `shape` (this process's rows), drawn on the generator's device."""
        g = self.generator
        return self.local(lambda s: torch.randn(s, generator=g, device=g.device, dtype=dtype), shape).to(device or g.device)

    def randint(self, high: int, shape, device=None) -> torch.Tensor:
        """Integers in [0, high) of `shape` (this process's rows)."""
        g = self.generator
        return self.local(lambda s: torch.randint(0, high, s, generator=g, device=g.device), shape).to(device or g.device)

    def posterior_sample(self, dist) -> torch.Tensor:
        """A sample of a diagonal Gaussian (diffusers' `latent_dist`), the numbers its own
        `.sample(generator)` would draw with one process."""
        return dist.mean + dist.std * self.randn(dist.mean.shape, dist.parameters.device, dist.parameters.dtype)


def find_state_file(resume_from: str | os.PathLike, pattern: str = STATE_PATTERN) -> Path:
    """The state file to resume from: the given file, or the highest-step one in `<run>/checkpoints/`."""
    path = Path(resume_from)
    if path.is_file():
        return path
    if not path.is_dir():
        raise UserError(f"{path}: --resume_from must be a run folder or a training-state file")
    regex = re.compile(pattern)
    candidates = [(int(m.group(1)), p) for p in (path / CHECKPOINTS_DIR).glob("*.pt") if (m := regex.search(p.name))]
    if not candidates:
        raise UserError(f"{path}: no checkpoints/training-state-<step>.pt to resume from")
    return max(candidates)[1]


def read_training_state(path: Path, state_format: str, model_name: str, version: int) -> dict:
    """A training-state dict of `state_format` and `version`; UserError for anything else."""
    state = read_torch_dict(path, "training-state file")
    if state.get("format") != state_format:
        raise UserError(f"{path}: not a {model_name} training-state file (an official checkpoint-<step>.pt "
                        "can be used as ckpt.resume_ckpt_path instead)")
    if state.get("version") != version:
        raise UserError(f"{path}: training state version {state.get('version')} (this trainer resumes version "
                        f"{version}); start a new run with its checkpoint-<step>.pt as ckpt.resume_ckpt_path")
    return state


def read_torch_dict(path: str | os.PathLike, what: str = "checkpoint") -> dict:
    """A dict saved with torch.save, read with weights_only=True; UserError naming the file otherwise."""
    value = load_torch_file(path, what)
    if not isinstance(value, dict):
        raise UserError(f"{path}: not a {what} (no dict inside)")
    return value


def run_dir_of(path: Path) -> Path:
    """The run folder a state file belongs to (`<run>/checkpoints/<file>` -> `<run>`)."""
    parent = Path(path).resolve().parent
    return parent.parent if parent.name == CHECKPOINTS_DIR else parent


def prune(folder: Path, pattern: str, keep: int) -> None:
    """Delete all but the `keep` highest-step files in `folder` whose name matches `pattern` (group 1 = step)."""
    if keep <= 0:
        return
    regex = re.compile(pattern)
    found = sorted((int(m.group(1)), p) for p in Path(folder).glob("*") if (m := regex.search(p.name)))
    for _, path in found[:-keep]:
        path.unlink(missing_ok=True)
