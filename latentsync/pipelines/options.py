"""LipsyncOptions: the one vocabulary of per-run settings (names, defaults, bounds, help).

The inference CLI generates its flags from these fields, the Gradio app builds its controls from
them, and the pipeline's errors name the field ("inference_steps must be >= 1"). Nothing here
imports torch, so the CLI can check a user's options before the slow imports.
"""

import argparse
import math
import typing
from dataclasses import dataclass, fields

from latentsync.cli_args import add_arguments, setting, value_type
from latentsync.constants import DEFAULT_SEED, MODEL_FPS, OUTPUT_CRF
from latentsync.errors import UserError
from latentsync.schedulers import SAMPLERS  # no torch import there either

SILENCE_MODES = ("mute", "keep", "off")
TAIL_MODES = ("overlap", "short")
RANDOM_SEED = -1  # what the CLI and the app take for "draw a random seed" (the option itself is None)
ORIGINAL_FPS = "original"  # CLI value of output_fps: the input video's frame rate
AUTOCAST_MODES = ("off", "auto", "bf16", "fp16")
CPU_KERNELS = ("none", "int8", "channels_last", "int8+channels_last")
DECODE_REGIONS = ("full", "mouth")
# Presets expand into option values; a value given explicitly wins over the preset's.
# quality = the reference settings; the speed/quality trade-off of the others is measured by
# benchmarks/speed.py (docs/benchmarks/speed.md).
PRESETS = {
    "quality": dict(scheduler="ddim", inference_steps=20, enable_deepcache=False, autocast="off", cpu_kernels="none",
                    decode_region="full"),
    "balanced": dict(scheduler="dpmpp", inference_steps=6, enable_deepcache=False, autocast="auto",
                     cpu_kernels="none", decode_region="full"),
    "fast": dict(scheduler="dpmpp", inference_steps=6, enable_deepcache=True, autocast="auto", cpu_kernels="none",
                 decode_region="mouth"),
}
PRESET_FLAG = "preset"  # a command-line expansion into the fields above, not a field itself


def option(default, help: str, *, choices=None, min=None, max=None, cli: bool = True, ui_max=None,
           label: str | None = None, metavar=None, parse=None):
    """A LipsyncOptions field with its help, allowed values and where it is exposed: a
    latentsync.cli_args `setting` (its flag) plus the bounds `check_options` enforces.

    `cli=False` keeps a field off the command line (library and training use only); `ui_max` is the
    largest value the app's slider offers (the library accepts more); `label` names the app control;
    `parse` turns the flag's text into the value.
    """
    return setting(default, help, choices=choices, cli=cli, metavar=metavar, parse=parse, min=min, max=max,
                   ui_max=ui_max, label=label)


def fps_arg(text: str):
    if text == ORIGINAL_FPS:
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or '{ORIGINAL_FPS}'") from None


@dataclass(frozen=True)
class LipsyncOptions:
    """How one video is dubbed. Frozen and checked on construction (a bad value raises a UserError
    naming it), so every LipsyncOptions in existence is valid: nothing checks it again. Change a
    value with `dataclasses.replace(options, name=value)`, which checks the new one."""

    inference_steps: int = option(20, "denoising steps", min=1, ui_max=50, label="Inference steps")
    scheduler: str = option("ddim", "sampler: ddim (the reference), dpmpp (DPM-Solver++) or unipc (UniPC); the "
                                    "multistep ones need fewer steps", choices=SAMPLERS)
    guidance_scale: float = option(1.5, "classifier-free audio guidance (1.0 turns guidance off)", min=1.0,
                                   ui_max=3.0, label="Guidance scale")
    seed: int | None = option(DEFAULT_SEED, f"random seed ({RANDOM_SEED}: a random one)", min=0,
                              label=f"Seed ({RANDOM_SEED}: random)")
    enable_deepcache: bool = option(False, "re-use deep UNet features between steps (faster, slightly different)")
    autocast: str = option("off", "run the UNet and VAE in reduced precision (weights stay as loaded): auto = bf16 "
                                  "where the hardware computes it natively (CPU: AVX512-BF16/AMX), else off; "
                                  "bf16/fp16 fall back to off with a warning where not native",
                           choices=AUTOCAST_MODES)
    cpu_kernels: str = option("none", "CPU only: int8 = dynamic int8 quantisation of the UNet's Linear layers; "
                                      "channels_last = NHWC convolutions", choices=CPU_KERNELS)
    compile: bool = option(False, "torch.compile the UNet (slow first segment; needs a C++ compiler on the CPU)")
    decode_region: str = option("full", "VAE-decode the whole face (full) or only the latent rows of the mouth region "
                                        "plus a margin (mouth: faster, a few levels off inside the mouth region, "
                                        "docs/benchmarks/speed.md)", choices=DECODE_REGIONS)
    silence: str = option("mute", "no speech: mute = generate with silent audio (mouth closed); keep = original "
                                  "frames; off = as the reference (no voice detection)", choices=SILENCE_MODES)
    segment_tail: str = option("overlap", "overlap: a run's last segment re-uses earlier frames to stay full "
                                          "length; short: a shorter last segment (the reference)", choices=TAIL_MODES)
    face_index: int | None = option(None, "speaker: n-th face from the left (0-based); default: the largest",
                                    min=0)
    face_box: tuple[float, float, float, float] | None = option(
        None, "speaker: the face overlapping this box x1 y1 x2 y2 in the first frames",
        metavar=("X1", "Y1", "X2", "Y2"))
    output_fps: float | None = option(None, f"frame rate of the output (default: {MODEL_FPS}, the model's rate; "
                                            f"'{ORIGINAL_FPS}': the input's rate)", min=1.0, parse=fps_arg)
    output_height: int | None = option(None, "scale the output to this height (default: the input's)", min=16)
    segment_batch: int = option(1, "segments denoised together in one UNet call (same frames; mainly faster on a "
                                   "GPU, more memory)", min=1)
    num_frames: int = option(16, "frames per UNet segment (at most the UNet's max_frames: its motion modules' "
                                 "temporal_position_encoding_max_len, 24 in the released configs)", min=1, cli=False)
    crf: int = option(OUTPUT_CRF, "x264 quality of the output (0 lossless .. 51 worst)", min=0, max=51, cli=False)
    temp_dir: str | None = option(None, "folder for temporary files (default: the system's)")
    show_progress: bool = option(True, "draw progress bars on the terminal", cli=False)

    def __post_init__(self) -> None:
        if self.face_box is not None:  # (frozen: set through object.__setattr__, as dataclasses do)
            object.__setattr__(self, "face_box", tuple(float(v) for v in self.face_box))
        check_options(self)


def option_fields() -> list:
    """The dataclass fields of LipsyncOptions (each with its metadata)."""
    return list(fields(LipsyncOptions))


def option_field(name: str):
    """The dataclass field of option `name` (KeyError for a name that is not an option)."""
    return {f.name: f for f in option_fields()}[name]


def field_type(name: str) -> type:
    """The value type of option `name` without Optional (int, float, str, bool or tuple)."""
    return value_type(typing.get_type_hints(LipsyncOptions)[name])


def check_options(opts: LipsyncOptions) -> None:
    """UserError naming the first option whose value is outside its choices or bounds (run by
    LipsyncOptions on construction; the per-UNet segment length limit is the pipeline's check)."""
    for f in fields(opts):
        value, meta = getattr(opts, f.name), f.metadata
        if value is None:
            continue
        if meta["choices"] and value not in meta["choices"]:
            raise UserError(f"{f.name} {value!r}: expected one of {', '.join(meta['choices'])}")
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{f.name} {value!r}: must be a finite number")
        if meta["min"] is not None and value < meta["min"]:
            raise UserError(f"{f.name} must be >= {meta['min']} (got {value})")
        if meta["max"] is not None and value > meta["max"]:
            raise UserError(f"{f.name} must be <= {meta['max']} (got {value})")


def preset_values(preset: str | None, explicit: dict) -> dict:
    """The option values of `preset` (quality, balanced, fast; None: none) with `explicit` values
    on top: a value given explicitly always wins over the preset's."""
    if preset is not None and preset not in PRESETS:
        raise UserError(f"preset {preset!r}: expected one of {', '.join(PRESETS)}")
    return {**PRESETS.get(preset, {}), **explicit}


def preset_options(preset: str | None, **explicit) -> LipsyncOptions:
    """LipsyncOptions of `preset` with `explicit` values on top (see `preset_values`)."""
    return LipsyncOptions(**preset_values(preset, explicit))


# -- the command line ---------------------------------------------------------------------------

def add_option_arguments(parser: argparse.ArgumentParser) -> None:
    """One `--name` flag per CLI option field, with the field's default, choices and help, and
    `--preset`, which expands into several of them (see PRESETS)."""
    parser.add_argument(f"--{PRESET_FLAG}", default=None, choices=tuple(PRESETS),
                        help="; ".join(f"{name}: " + ", ".join(f"{k} {v}" for k, v in values.items())
                                       for name, values in PRESETS.items()) + " (flags given explicitly win)")
    add_arguments(parser, LipsyncOptions)


def given_options(parser: argparse.ArgumentParser, argv=None) -> set[str]:
    """The option fields given on the command line `argv` (argparse fills a default only into an
    attribute the namespace does not have yet, so pre-set markers reveal what was typed)."""
    unset = object()
    names = [f.name for f in option_fields() if f.metadata["cli"]]
    namespace = argparse.Namespace(**{name: unset for name in names})
    parser.parse_known_args(argv, namespace=namespace)
    return {name for name in names if getattr(namespace, name) is not unset}


def option_values_from_args(args: argparse.Namespace) -> dict:
    """The option values of parsed CLI flags, `--preset` expanded under the flags given explicitly.

    Which flags were given comes from `args.given_options` (scripts/inference.py sets it with
    `given_options`); without it, a value different from the field's default counts as given.
    """
    values = {f.name: getattr(args, f.name) for f in option_fields() if f.metadata["cli"] and hasattr(args, f.name)}
    preset = getattr(args, PRESET_FLAG, None)
    if preset is not None:
        given = getattr(args, "given_options", None)
        if given is None:
            given = {name for name, value in values.items() if value != option_field(name).default}
        values.update({k: v for k, v in PRESETS[preset].items() if k not in given})
    return values


def options_from_values(values: dict, input_fps: float | None = None) -> LipsyncOptions:
    """LipsyncOptions from command-line style values, as the CLI, the server and batch jobs take
    them: seed -1 = a random seed; output_fps 'original' = `input_fps` (None: the default, for
    checking only) and a number given as text is parsed. UserError naming a bad or unknown option."""
    values = dict(values)
    unknown = sorted(set(values) - set(LipsyncOptions.__dataclass_fields__))
    if unknown:
        raise UserError(f"unknown option {unknown[0]!r}")
    if values.get("seed") == RANDOM_SEED:
        values["seed"] = None
    fps = values.get("output_fps")
    if fps == ORIGINAL_FPS:
        values["output_fps"] = input_fps
    elif isinstance(fps, str):
        try:
            values["output_fps"] = float(fps)
        except ValueError:
            raise UserError(f"output_fps {fps!r}: expected a number or '{ORIGINAL_FPS}'") from None
    return LipsyncOptions(**values)


def options_from_args(args: argparse.Namespace, **overrides) -> LipsyncOptions:
    """LipsyncOptions from parsed CLI flags (--preset expanded, see `options_from_values`);
    `overrides` replace values (e.g. output_fps=the input's rate for 'original')."""
    return options_from_values({**option_values_from_args(args), **overrides})
