"""Generic pieces of a resumable training run: the accelerator, run folders, atomic saves, RNG
snapshots, finding and reading the state file to resume from, index batches, per-step random
generators and loss-curve PNGs.

Used by the SyncNet and the UNet trainers (nothing here knows about a particular model).
"""

import hashlib
import logging
import os
import random
import re
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from latentsync.errors import UserError

logger = logging.getLogger(__name__)

PRECISIONS = ("no", "fp16", "bf16")


def choose_precision(requested: str, cuda: bool) -> str:
    """Accelerate's mixed_precision: fp16 only on CUDA, bf16 if asked, else no."""
    if requested not in PRECISIONS:
        raise UserError(f"mixed precision {requested!r}: expected one of {', '.join(PRECISIONS)}")
    if requested == "fp16" and not cuda:
        return "no"
    return requested


def make_accelerator(device_option: str | None, requested_precision: str | None, default_precision: str):
    """An `accelerate.Accelerator` on the requested device (the CPU with device=cpu; cuda:N selects GPU N)."""
    from accelerate import Accelerator

    device = (device_option or "auto").lower()
    if device not in ("auto", "cpu", "cuda", "mps") and not device.startswith("cuda:"):
        raise UserError(f"--device {device_option!r}: expected auto, cpu, cuda or mps")
    cpu = device == "cpu" or (device.startswith("cuda") and not torch.cuda.is_available())
    if cpu and device != "cpu":
        logger.warning("CUDA was requested but is not available; training on the CPU")
    if device.startswith("cuda:") and torch.cuda.is_available():
        torch.cuda.set_device(torch.device(device))
    requested = default_precision if requested_precision is None else requested_precision
    precision = choose_precision(requested, cuda=not cpu and torch.cuda.is_available())
    return Accelerator(mixed_precision=precision, cpu=cpu)


def load_run_config(path: str | os.PathLike, overrides: Sequence[str], sections: str, required_keys: Sequence[str],
                    train_output_dir: str | None = None, max_train_steps: int | None = None) -> DictConfig:
    """A training YAML with dot-list `overrides` and the command-line output folder / step count
    applied (not in struct mode); UserError for an unreadable file or a missing required key."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        config = OmegaConf.load(path)
        if overrides:
            config = OmegaConf.merge(config, OmegaConf.from_dotlist(list(overrides)))
    except (OmegaConfBaseException, yaml.YAMLError, ValueError, OSError) as e:
        text = str(e).strip()
        raise UserError(f"{path}: not a readable config ({text.splitlines()[0] if text else type(e).__name__})") from None
    if not isinstance(config, DictConfig):
        raise UserError(f"{path}: expected a mapping with sections {sections}")
    OmegaConf.set_struct(config, False)
    if train_output_dir is not None:
        config.data.train_output_dir = train_output_dir
    if max_train_steps is not None:
        config.run.max_train_steps = int(max_train_steps)
    for key in required_keys:
        if OmegaConf.select(config, key, default=None) is None:
            raise UserError(f"{path}: missing setting {key}")
    return config


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


def atomic_save(obj, path: Path) -> None:
    """torch.save to a temporary name in the same folder, then rename (readers never see half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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


def find_state_file(resume_from: str | os.PathLike, pattern: str = r"training-state-(\d+)\.pt$") -> Path:
    """The state file to resume from: the given file, or the highest-step one in `<run>/checkpoints/`."""
    path = Path(resume_from)
    if path.is_file():
        return path
    if not path.is_dir():
        raise UserError(f"{path}: --resume_from must be a run folder or a training-state file")
    regex = re.compile(pattern)
    candidates = [(int(m.group(1)), p) for p in (path / "checkpoints").glob("*.pt") if (m := regex.search(p.name))]
    if not candidates:
        raise UserError(f"{path}: no checkpoints/training-state-<step>.pt to resume from")
    return max(candidates)[1]


def read_training_state(path: Path, state_format: str, model_name: str) -> dict:
    """A training-state dict whose "format" is `state_format`; UserError for anything else."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and torch errors all mean "not a usable file"
        raise UserError(f"{path}: not a readable training-state file ({str(e).splitlines()[0]})") from None
    if not isinstance(state, dict) or state.get("format") != state_format:
        raise UserError(f"{path}: not a {model_name} training-state file (an official checkpoint-<step>.pt "
                        "can be used as ckpt.resume_ckpt_path instead)")
    return state


def run_dir_of(state_path: Path) -> Path:
    """The run folder a state file belongs to (`<run>/checkpoints/<file>` -> `<run>`)."""
    parent = Path(state_path).resolve().parent
    return parent.parent if parent.name == "checkpoints" else parent


def prune(folder: Path, pattern: str, keep: int) -> None:
    """Delete all but the `keep` highest-step files in `folder` whose name matches `pattern` (group 1 = step)."""
    if keep <= 0:
        return
    regex = re.compile(pattern)
    found = sorted((int(m.group(1)), p) for p in Path(folder).glob("*") if (m := regex.search(p.name)))
    for _, path in found[:-keep]:
        path.unlink(missing_ok=True)


def save_curves(path: Path, steps: Sequence[int], curves: Mapping[str, Sequence[float]], title: str,
                x_label: str = "Step", y_label: str = "Loss") -> Path:
    """One PNG with a panel per curve (matplotlib Agg; temp name, then rename)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {name: values for name, values in curves.items() if len(values)}
    panels = max(1, len(curves))
    columns = min(3, panels)
    rows = (panels + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.6 * rows), squeeze=False)
    for ax, (name, values) in zip(axes.flat, curves.items()):
        ax.plot(list(steps)[-len(values):], list(values), label=name)
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        ax.legend()
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(curves):]:
        ax.axis("off")
    return save_figure(fig, path, title, dpi=90)


def save_figure(fig, path: Path, title: str, dpi: int) -> Path:
    """Give `fig` its title, write it as a PNG (temp name, then rename) and close it."""
    import matplotlib.pyplot as plt

    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    os.replace(tmp, path)
    return path
