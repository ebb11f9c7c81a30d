"""Generic pieces of a resumable training run: atomic saves, RNG snapshots, finding the state file
to resume from, per-step random generators and loss-curve PNGs.

Used by the UNet trainer; written so other trainers can use them too (nothing here knows about a
particular model).
"""

import hashlib
import os
import random
import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from latentsync.errors import UserError


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
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    os.replace(tmp, path)
    return path
