"""The DDIM noise scheduler, built from the shipped `configs/scheduler_config.json`.

That JSON is the one source of the sampler's settings (1000 training steps, scaled-linear betas
0.00085 .. 0.012, no clipping, `steps_offset` 1, `set_alpha_to_one` false, as the reference
ships them). It is found through `latentsync.paths`, so it works in a checkout and from an
installed wheel (which carries the configs inside the package).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from latentsync.errors import UserError
from latentsync.paths import config_path

SCHEDULER_CONFIG_NAME = "scheduler_config.json"
METADATA_PREFIX = "_"  # "_class_name", "_diffusers_version": not constructor arguments


def load_scheduler_config(path: str | os.PathLike | None = None) -> dict:
    """The scheduler settings of `path` (default: the shipped scheduler_config.json) as a dict,
    or a UserError naming the file."""
    path = Path(path) if path is not None else config_path(SCHEDULER_CONFIG_NAME)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: scheduler config not found") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable JSON scheduler config ({exc})") from None
    if not isinstance(config, dict):
        raise UserError(f"{path}: expected a JSON object of scheduler settings")
    return config


def make_scheduler(path: str | os.PathLike | None = None):
    """A fresh `diffusers.DDIMScheduler` with the settings of `load_scheduler_config(path)`."""
    from diffusers import DDIMScheduler

    config = load_scheduler_config(path)
    settings = {k: v for k, v in config.items() if not k.startswith(METADATA_PREFIX)}
    return DDIMScheduler.from_config(settings)
