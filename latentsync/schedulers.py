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
# what the UNet predicts (a training choice, `run.prediction_type` of its YAML): the noise (the
# reference's), the clean latent, or v = sqrt(abar) * noise - sqrt(1 - abar) * clean latent
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
DEFAULT_PREDICTION_TYPE = "epsilon"
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


def make_scheduler(path: str | os.PathLike | None = None, kind: str = DEFAULT_SAMPLER,
                   prediction_type: str | None = None):
    """A fresh sampler (default DDIM) with the settings of `load_scheduler_config(path)`, for a UNet
    that predicts `prediction_type` (None: the config's, the noise)."""
    config = load_scheduler_config(path)
    if prediction_type is not None:
        config["prediction_type"] = check_prediction_type(prediction_type, "prediction_type")
    return make_sampler(kind, config)


def check_prediction_type(value, where: str) -> str:
    """`value` if it is one of PREDICTION_TYPES, else a UserError naming `where`."""
    if value not in PREDICTION_TYPES:
        raise UserError(f"{where}: prediction_type {value!r}: expected one of {', '.join(PREDICTION_TYPES)}")
    return value


def unet_prediction_type(config, where: str) -> str:
    """What the UNet of a training/inference config (a parsed YAML, as a mapping; `where` names
    its file in errors) predicts: its `run.prediction_type` (absent in the reference's: the noise)."""
    value = (config.get("run") or {}).get("prediction_type")
    return check_prediction_type(value or DEFAULT_PREDICTION_TYPE, where)
