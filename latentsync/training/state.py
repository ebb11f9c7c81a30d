"""The files and random state of a resumable run: run folders, RNG snapshots,
finding and reading the state file to resume from, pruning old states, index batches and
per-step random generators.

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


def checkpoint_path(run_dir: str | os.PathLike, step: int) -> Path:
    """`<run>/checkpoints/checkpoint-<step>.pt`, the official checkpoint of both trainers."""
    return Path(run_dir) / CHECKPOINTS_DIR / CHECKPOINT_NAME.format(step=step)


def state_path(run_dir: str | os.PathLike, step: int) -> Path:
    """`<run>/checkpoints/training-state-<step>.pt`, what `--resume_from` continues."""
    return Path(run_dir) / CHECKPOINTS_DIR / STATE_NAME.format(step=step)


def new_run_dir(train_output_dir: str | os.PathLike, run_name: str | None) -> Path:
    """`<train_output_dir>/<run_name or train-YYYY_MM_DD-HH_MM_SS>`; UserError if it already has checkpoints."""
    name = run_name or time.strftime("train-%Y_%m_%d-%H_%M_%S")
    run_dir = Path(train_output_dir) / name
    if (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()):
        raise UserError(f"{run_dir}: run folder already has checkpoints; use --resume_from {run_dir} "
                        "or another --run_name")
    return run_dir


class IndexBatches(torch.utils.data.Sampler):
    """Endless batches of sample indices: batch k of process r holds (k*world + r)*B ... +B-1.

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
