"""Train StableSyncNet (SPEC 8).

    python -m scripts.train_syncnet --config_path configs/syncnet/syncnet_16_pixel_attn.yaml \\
        [--train_output_dir DIR] [--max_train_steps N] [--device cpu] [data.batch_size=8 ...]
    python -m scripts.train_syncnet --resume_from outputs/syncnet/train-2025_01_01-12_00_00 \\
        [--max_train_steps N]

Trailing KEY=VALUE arguments override config entries (OmegaConf dot-list). With --resume_from
and no --config_path, the run folder's config.yaml is used. Multi-GPU: `accelerate launch -m
scripts.train_syncnet ...` (see train_syncnet.sh). Exit code 2 with a one-line message on a bad
config, missing data or unusable checkpoint.
"""

import argparse
import sys
from pathlib import Path

from latentsync.errors import UserError
from latentsync.training.syncnet_trainer import TrainOptions, find_state_file, run_dir_of, train
from scripts._cli import TRAIN_LOG_FORMAT, add_run_arguments, check_overrides, run_cli


def parse_args(argv=None) -> TrainOptions:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config_path", help="configs/syncnet/*.yaml (default with --resume_from: the run's config)")
    add_run_arguments(parser, device_help="auto (default), cpu, cuda or mps")
    parser.add_argument("--num_threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. data.batch_size=8")
    args = parser.parse_args(argv)
    check_overrides(parser, args.overrides)
    return TrainOptions(**vars(args))


def default_config(options: TrainOptions) -> TrainOptions:
    """Fill --config_path from the run folder when resuming without one."""
    if options.config_path:
        return options
    if not options.resume_from:
        raise UserError("--config_path is required (unless --resume_from names a run to continue)")
    options.config_path = str(run_dir_of(find_state_file(options.resume_from)) / "config.yaml")
    return options


def run(options: TrainOptions) -> None:
    run_dir = train(default_config(options))
    print(f"SyncNet training finished: {Path(run_dir)}")


def main(argv=None) -> int:
    return run_cli(lambda: run(parse_args(argv)), TRAIN_LOG_FORMAT)


if __name__ == "__main__":
    sys.exit(main())
