"""The command-line options both trainers take (`scripts/train_unet.py`, `scripts/train_syncnet.py`)."""

import argparse
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable


@dataclass
class TrainOptions:
    """Command-line choices; None means "take it from the config"."""

    config_path: str | None = None  # default with resume_from: the run's config.yaml
    train_output_dir: str | None = None
    max_train_steps: int | None = None
    device: str | None = None  # auto (default), cpu, cuda, cuda:N, mps
    resume_from: str | None = None  # run folder or checkpoints/training-state-<step>.pt
    run_name: str | None = None  # default train-YYYY_MM_DD-HH_MM_SS
    mixed_precision: str | None = None  # no, fp16, bf16 (default: run.mixed_precision; fp16 only on CUDA)
    num_threads: int | None = None  # torch CPU threads (1 is much faster on a busy machine)
    show_progress: bool = True
    overrides: list[str] = field(default_factory=list)  # OmegaConf dot-list, e.g. data.batch_size=4


def parse_train_options(argv, description: str, config_flag: str, config_help: str) -> TrainOptions:
    """TrainOptions from a command line `<config_flag> PATH [options] [KEY=VALUE ...]`; argparse
    errors (exit code 2) for an unknown option or an override that is not KEY=VALUE."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(config_flag, dest="config_path",
                        help=f"{config_help} (default with --resume_from: the run's config)")
    parser.add_argument("--train_output_dir", help="folder for run folders (overrides data.train_output_dir)")
    parser.add_argument("--max_train_steps", type=int, help="overrides run.max_train_steps")
    parser.add_argument("--device", help="auto (default), cpu, cuda, cuda:N or mps")
    parser.add_argument("--resume_from", help="run folder or checkpoints/training-state-<step>.pt to continue exactly")
    parser.add_argument("--run_name", help="run folder name (default train-YYYY_MM_DD-HH_MM_SS)")
    parser.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"],
                        help="default: run.mixed_precision of the config (fp16 is used on CUDA only)")
    parser.add_argument("--num_threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no_progress", dest="show_progress", action="store_false", help="no progress bar")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. data.batch_size=4")
    args = parser.parse_args(argv)
    for item in args.overrides:
        if "=" not in item:
            parser.error(f"override {item!r} is not KEY=VALUE")
    return TrainOptions(**{f.name: getattr(args, f.name) for f in fields(TrainOptions)})


def training_command(argv, description: str, kind, train: Callable[[TrainOptions], Path],
                     config_help: str) -> Callable[[], None]:
    """What a training script runs (inside latentsync.cli_args.run_cli): parse `argv`, train, print the run folder."""

    def command() -> None:
        run_dir = train(parse_train_options(argv, description, kind.config_flag, config_help))
        print(f"{kind.name} training finished: {run_dir}")

    return command
