"""Reading a training YAML, for both trainers: dot-list overrides, renamed keys (the old names
still work, with a warning), and `RunSettings`, the settings every run has under the same keys.

Shared keys (both `configs/unet/*.yaml` and `configs/syncnet/*.yaml`):
    data.batch_size, data.train_output_dir
    ckpt.save_ckpt_steps, ckpt.keep_training_states
    run.seed, run.max_train_steps, run.validation_steps, run.mixed_precision, run.gradient_checkpointing
    optimizer.lr, optimizer.max_grad_norm, optimizer.weight_decay, optimizer.lr_scheduler,
    optimizer.lr_warmup_steps
"""

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from latentsync.errors import UserError

logger = logging.getLogger(__name__)

# old key -> (new key, how an old value reads under the new key)
RENAMED_KEYS: dict[str, tuple[str, Callable]] = {
    "run.enable_gradient_checkpointing": ("run.gradient_checkpointing", bool),
    "run.mixed_precision_training": ("run.mixed_precision", lambda on: "fp16" if on else "no"),
}
SHARED_REQUIRED_KEYS = ("model", "data.batch_size", "data.train_output_dir", "ckpt.save_ckpt_steps", "run.seed",
                        "run.max_train_steps", "optimizer.lr", "optimizer.max_grad_norm")
PRECISIONS = ("no", "fp16", "bf16")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "cosine")
DEFAULT_WEIGHT_DECAY = 1e-2  # AdamW's PyTorch default, which both reference trainers use


@dataclass
class RunSettings:
    """What every training run reads from its config, under the same keys in both trainers."""

    batch_size: int
    max_train_steps: int
    save_ckpt_steps: int
    validation_steps: int
    keep_training_states: int
    seed: int
    lr: float
    max_grad_norm: float
    weight_decay: float = DEFAULT_WEIGHT_DECAY
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False

    @classmethod
    def from_config(cls, config: DictConfig, path: str | os.PathLike) -> "RunSettings":
        """The settings, checked; UserError naming the file and key for a value that cannot work."""
        run, opt, ckpt = config.run, config.optimizer, config.ckpt
        save_steps = int(ckpt.save_ckpt_steps)
        settings = cls(
            batch_size=int(config.data.batch_size), max_train_steps=int(run.max_train_steps),
            save_ckpt_steps=save_steps, validation_steps=int(run.get("validation_steps") or save_steps),
            keep_training_states=int(ckpt.get("keep_training_states", 1)), seed=int(run.seed), lr=float(opt.lr),
            max_grad_norm=float(opt.max_grad_norm), weight_decay=float(opt.get("weight_decay", DEFAULT_WEIGHT_DECAY)),
            lr_scheduler=str(opt.get("lr_scheduler") or "constant"),
            lr_warmup_steps=int(opt.get("lr_warmup_steps") or 0),
            mixed_precision=str(run.get("mixed_precision") or "no"),
            gradient_checkpointing=bool(run.get("gradient_checkpointing", False)))
        settings.check(path)
        return settings

    def check(self, path) -> None:
        for key, value in (("data.batch_size", self.batch_size), ("ckpt.save_ckpt_steps", self.save_ckpt_steps),
                           ("run.validation_steps", self.validation_steps)):
            if value < 1:
                raise UserError(f"{path}: {key} must be at least 1 (got {value})")
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise UserError(f"{path}: optimizer.lr_scheduler {self.lr_scheduler!r}: expected one of "
                            f"{', '.join(LR_SCHEDULERS)} (with optional optimizer.lr_warmup_steps)")
        if self.mixed_precision not in PRECISIONS:
            raise UserError(f"{path}: run.mixed_precision {self.mixed_precision!r}: expected one of "
                            f"{', '.join(PRECISIONS)}")


def load_training_config(path: str | os.PathLike, overrides: Sequence[str], sections: str,
                         required_keys: Sequence[str], train_output_dir: str | None = None,
                         max_train_steps: int | None = None) -> tuple[DictConfig, RunSettings]:
    """A training YAML with dot-list `overrides`, renamed keys migrated and the command-line output
    folder / step count applied (not in struct mode), and its checked `RunSettings`."""
    config = read_yaml(path, overrides, sections)
    migrate_keys(config, path)
    if train_output_dir is not None:
        config.data.train_output_dir = train_output_dir
    if max_train_steps is not None:
        config.run.max_train_steps = int(max_train_steps)
    for key in (*SHARED_REQUIRED_KEYS, *required_keys):
        if OmegaConf.select(config, key, default=None) is None:
            raise UserError(f"{path}: missing setting {key}")
    return config, RunSettings.from_config(config, path)


def read_yaml(path: str | os.PathLike, overrides: Sequence[str], sections: str) -> DictConfig:
    """The YAML mapping with the overrides merged; UserError for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        config = OmegaConf.load(path)
        if overrides:
            config = OmegaConf.merge(config, OmegaConf.from_dotlist(list(overrides)))
    except (OmegaConfBaseException, yaml.YAMLError, ValueError, OSError) as e:
        text = str(e).strip()
        reason = text.splitlines()[0] if text else type(e).__name__
        raise UserError(f"{path}: not a readable config ({reason})") from None
    if not isinstance(config, DictConfig):
        raise UserError(f"{path}: expected a mapping with sections {sections}")
    OmegaConf.set_struct(config, False)
    return config


def migrate_keys(config: DictConfig, path: str | os.PathLike = "config") -> DictConfig:
    """Rename deprecated keys in place (see RENAMED_KEYS), warning once per key. When the file has
    both names the new one wins and the old one is dropped."""
    for old, (new, convert) in RENAMED_KEYS.items():
        parent_key, leaf = old.rsplit(".", 1)
        parent = OmegaConf.select(config, parent_key, default=None)
        if not isinstance(parent, DictConfig) or leaf not in parent:
            continue
        value = parent[leaf]
        del parent[leaf]
        if OmegaConf.select(config, new, default=None) is not None:
            logger.warning("%s: %s is deprecated and ignored (%s is set)", path, old, new)
            continue
        OmegaConf.update(config, new, convert(value), force_add=True)
        logger.warning("%s: %s is deprecated; read as %s: %s (rename it in the config)", path, old, new,
                       OmegaConf.select(config, new))
    return config
