"""The noise schedulers (samplers), all built from the shipped `configs/scheduler_config.json`.

That JSON is the one source of the noise schedule (1000 training steps, scaled-linear betas
0.00085 .. 0.012, no clipping, `steps_offset` 1, `set_alpha_to_one` false, as the reference
ships them). It is found through `latentsync.paths`, so it works in a checkout and from an
installed wheel (which carries the configs inside the package).

Samplers (the `scheduler` option):
  ddim  - DDIM, eta 0: the reference sampler and the default (20 steps);
  dpmpp - DPM-Solver++ (2nd order multistep): close to DDIM-20 in about half the steps;
  unipc - UniPC (multistep predictor-corrector): good at very few steps.
The multistep samplers keep state between steps (earlier model outputs), so the pipeline builds a
fresh one for every segment (`make_sampler`). Each sampler spaces its timesteps its own way
(DDIM "leading" with the offset, the multistep ones "linspace" from t = 999).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from latentsync.errors import UserError
from latentsync.paths import config_path

SCHEDULER_CONFIG_NAME = "scheduler_config.json"
METADATA_PREFIX = "_"  # "_class_name", "_diffusers_version": not constructor arguments
SAMPLERS = ("ddim", "dpmpp", "unipc")
DEFAULT_SAMPLER = "ddim"
# constructor settings each sampler gets on top of the shared noise schedule
SAMPLER_SETTINGS = {"ddim": {}, "dpmpp": dict(algorithm_type="dpmsolver++", solver_order=2), "unipc": {}}
# the schedule keys every sampler reads; the rest of the JSON (clip_sample, set_alpha_to_one, ...) is DDIM's own
SHARED_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "steps_offset",
               "prediction_type")


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


def _sampler_class(kind: str):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

    classes = {"ddim": DDIMScheduler, "dpmpp": DPMSolverMultistepScheduler, "unipc": UniPCMultistepScheduler}
    if kind not in classes:
        raise UserError(f"scheduler {kind!r}: expected one of {', '.join(SAMPLERS)}")
    return classes[kind]


def make_sampler(kind: str = DEFAULT_SAMPLER, config: dict | None = None):
    """A fresh sampler of `kind` on the noise schedule `config` (default: the shipped JSON).

    `config` may be a loaded JSON dict or another scheduler's `.config`, so a pipeline built with a
    custom schedule keeps it whichever sampler a run asks for.
    """
    config = dict(config) if config is not None else load_scheduler_config()
    settings = {k: v for k, v in config.items() if not k.startswith(METADATA_PREFIX)}
    if kind != "ddim":
        settings = {k: v for k, v in settings.items() if k in SHARED_KEYS}
    return _sampler_class(kind).from_config({**settings, **SAMPLER_SETTINGS[kind]})


def make_scheduler(path: str | os.PathLike | None = None, kind: str = DEFAULT_SAMPLER):
    """A fresh sampler (default DDIM) with the settings of `load_scheduler_config(path)`."""
    return make_sampler(kind, load_scheduler_config(path))
