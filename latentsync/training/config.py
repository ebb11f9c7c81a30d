"""Reading a training YAML, for every trainer: a typed config that rejects unknown keys.

Each trainer declares its config as dataclass sections (`UNetConfig` in unet_config.py,
`SyncNetConfig` in syncnet_config.py, `VAEConfig` in vae_trainer.py) built on the shared ones
here, which hold the settings every run has under the same keys:

    data.batch_size, data.train_output_dir, data.train_fileslist, data.train_data_dir, data.num_workers
    ckpt.save_ckpt_steps, ckpt.keep_training_states
    run.seed, run.max_train_steps, run.validation_steps, run.mixed_precision, run.gradient_checkpointing
    optimizer.lr, optimizer.max_grad_norm, optimizer.weight_decay, optimizer.lr_scheduler,
    optimizer.lr_warmup_steps

`load_training_config` merges the YAML and then each `key=value` override into the sections
(`OmegaConf.structured`): a key no section declares is a one-line UserError naming the file or the
override and the nearest valid key, raised before any model is built. The free-form mappings (the
`model:` section, ...) are checked against the keys their class accepts (`KEY_SPECS` of a config class). Renamed
keys (RENAMED_KEYS) still work, with a warning. The result is the config dataclass itself: the one
settings object a trainer passes down.
"""

import difflib
import logging
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, Mapping, Optional, Sequence, TypeVar

import yaml
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from latentsync.errors import UserError

logger = logging.getLogger(__name__)

# old key -> (new key, how an old value reads under the new key)
RENAMED_KEYS: dict[str, tuple[str, Callable]] = {
    "run.enable_gradient_checkpointing": ("run.gradient_checkpointing", bool),
    "run.mixed_precision_training": ("run.mixed_precision", lambda on: "fp16" if on else "no"),
}
PRECISIONS = ("no", "fp16", "bf16")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "cosine")
DEFAULT_WEIGHT_DECAY = 1e-2  # AdamW's PyTorch default, which both reference trainers use
KeySpec = Mapping[str, "KeySpec | None"]  # valid keys of a mapping; a value is the spec of a nested mapping
T = TypeVar("T", bound="TrainingConfig")


@dataclass
class DataSection:
    batch_size: int = MISSING
    train_output_dir: str = MISSING
    train_fileslist: Optional[str] = ""  # one clip path per line (preferred over train_data_dir)
    train_data_dir: Optional[str] = ""  # every .mp4 below this folder (searched recursively)
    num_workers: int = 0


@dataclass
class CkptSection:
    save_ckpt_steps: int = MISSING
    keep_training_states: int = 1  # training-state-<step>.pt files kept for --resume_from


@dataclass
class RunSection:
    seed: int = MISSING
    max_train_steps: int = MISSING
    validation_steps: Optional[int] = None  # default: ckpt.save_ckpt_steps
    mixed_precision: Optional[str] = "no"  # no, fp16 or bf16 (fp16 is used on CUDA only)
    gradient_checkpointing: bool = False


@dataclass
class OptimizerSection:
    lr: float = MISSING
    max_grad_norm: float = MISSING
    weight_decay: float = DEFAULT_WEIGHT_DECAY
    lr_scheduler: Optional[str] = "constant"  # constant, constant_with_warmup or cosine
    lr_warmup_steps: Optional[int] = 0


@dataclass
class TrainingConfig:
    """The sections every trainer's config has; subclasses narrow them to their own sections."""

    model: Dict[str, Any] = MISSING
    data: DataSection = field(default_factory=DataSection)
    ckpt: CkptSection = field(default_factory=CkptSection)
    run: RunSection = field(default_factory=RunSection)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)

    # the valid keys of free-form mappings (e.g. "model": its network's constructor arguments); unlisted: not checked
    KEY_SPECS: ClassVar[dict[str, KeySpec]] = {}

    def check(self, path) -> None:
        """Fill the "unset means default" settings, then UserError naming the file and key for a value
        that cannot work. Subclasses add their own checks."""
        self.run.validation_steps = self.run.validation_steps or self.ckpt.save_ckpt_steps
        self.run.mixed_precision = self.run.mixed_precision or "no"
        self.optimizer.lr_scheduler = self.optimizer.lr_scheduler or "constant"
        self.optimizer.lr_warmup_steps = self.optimizer.lr_warmup_steps or 0
        for key, value in (("data.batch_size", self.data.batch_size), ("ckpt.save_ckpt_steps", self.ckpt.save_ckpt_steps),
                           ("run.validation_steps", self.run.validation_steps)):
            if value < 1:
                raise UserError(f"{path}: {key} must be at least 1 (got {value})")
        if self.optimizer.lr_scheduler not in LR_SCHEDULERS:
            raise UserError(f"{path}: optimizer.lr_scheduler {self.optimizer.lr_scheduler!r}: expected one of "
                            f"{', '.join(LR_SCHEDULERS)} (with optional optimizer.lr_warmup_steps)")
        if self.run.mixed_precision not in PRECISIONS:
            raise UserError(f"{path}: run.mixed_precision {self.run.mixed_precision!r}: expected one of "
                            f"{', '.join(PRECISIONS)}")


def to_yaml(config: TrainingConfig) -> str:
    """The config as the YAML a run folder keeps (every setting, defaults included)."""
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def to_container(config: TrainingConfig) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(config), resolve=True)


def load_training_config(schema: type[T], path: str | os.PathLike, overrides: Sequence[str] = (),
                         train_output_dir: str | None = None, max_train_steps: int | None = None) -> T:
    """The YAML at `path` with the dot-list `overrides` (`key=value`), renamed keys migrated and the
    command-line output folder / step count applied, as a checked `schema` instance. UserError for
    an unknown key (naming the file or the override and the nearest valid key), a value of the
    wrong type, a missing required setting or an unusable value."""
    config = read_config(schema, path, overrides)
    if train_output_dir is not None:
        config.data.train_output_dir = train_output_dir
    if max_train_steps is not None:
        config.run.max_train_steps = int(max_train_steps)
    missing = sorted(OmegaConf.missing_keys(config))
    if missing:
        raise UserError(f"{path}: missing setting {missing[0]}")
    try:
        settings = OmegaConf.to_object(config)
    except OmegaConfBaseException as e:
        raise UserError(f"{path}: {first_line(e)}") from None
    settings.check(path)
    return settings


def read_config(schema: type[TrainingConfig], path: str | os.PathLike, overrides: Sequence[str] = ()) -> DictConfig:
    """The structured config of `schema` with the YAML and then each override merged (renamed keys
    migrated); the key and type checks only (see `load_training_config`)."""
    sections = ", ".join(f.name for f in fields(schema))
    config = OmegaConf.structured(schema)
    config = merge_checked(config, migrate_keys(read_yaml(path, sections), path), schema, f"{path}")
    for item in overrides:
        source = f"{path}: override {item}"
        config = merge_checked(config, migrate_keys(parse_override(item, source), source), schema, source)
    return config


def read_yaml(path: str | os.PathLike, sections: str) -> DictConfig:
    """The YAML mapping; UserError for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        config = OmegaConf.load(path)
    except (OmegaConfBaseException, yaml.YAMLError, ValueError, OSError) as e:
        raise UserError(f"{path}: not a readable config ({first_line(e)})") from None
    if not isinstance(config, DictConfig):
        raise UserError(f"{path}: expected a mapping with sections {sections}")
    return config


def parse_override(item: str, source: str) -> DictConfig:
    try:
        return OmegaConf.from_dotlist([item])
    except (OmegaConfBaseException, yaml.YAMLError, ValueError) as e:
        raise UserError(f"{source}: not a KEY=VALUE override ({first_line(e)})") from None


def merge_checked(config: DictConfig, update: DictConfig, schema: type[TrainingConfig], source: str) -> DictConfig:
    """`update` merged into the structured `config`; UserError naming `source` for an unknown key
    (with the nearest valid one) or a value of the wrong type."""
    for key, spec in schema.KEY_SPECS.items():
        mapping = OmegaConf.select(update, key, default=None)
        if isinstance(mapping, DictConfig):
            check_keys(OmegaConf.to_container(mapping), spec, key, source)
    try:
        return OmegaConf.merge(config, update)
    except ConfigKeyError as e:
        full_key = str(e.full_key or e.key)
        parent_key, _, leaf = full_key.rpartition(".")
        parent = OmegaConf.select(config, parent_key) if parent_key else config
        raise UserError(unknown_key_message(source, full_key, leaf, list(parent.keys()))) from None
    except OmegaConfBaseException as e:
        where = f"{e.full_key}: " if getattr(e, "full_key", None) else ""
        raise UserError(f"{source}: {where}{first_line(e)}") from None


def check_keys(value: Any, spec: KeySpec, prefix: str, source: str) -> None:
    """UserError naming `source` for a key of the mapping `value` (and its nested mappings) that
    `spec` does not list; keys starting with "_" (diffusers' `_class_name`, ...) are allowed."""
    if not isinstance(value, Mapping):
        return
    for key, item in value.items():
        if str(key).startswith("_"):
            continue
        if key not in spec:
            raise UserError(unknown_key_message(source, f"{prefix}.{key}", str(key), list(spec)))
        if spec[key] is not None:
            check_keys(item, spec[key], f"{prefix}.{key}", source)


def unknown_key_message(source: str, full_key: str, leaf: str, valid: Sequence[str]) -> str:
    parent = full_key[: -len(leaf)]
    close = difflib.get_close_matches(leaf, [str(k) for k in valid], n=1, cutoff=0.5)
    hint = f"did you mean {parent}{close[0]}?" if close else f"valid keys here: {', '.join(map(str, valid))}"
    return f"{source}: unknown key {full_key}; {hint}"


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


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def signature_keys(cls) -> dict[str, None]:
    """The keyword arguments of `cls.__init__` (a model's config keys), as a KeySpec."""
    import inspect

    params = inspect.signature(cls.__init__).parameters
    return {name: None for name, p in params.items()
            if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
