"""Train or fine-tune the LatentSync UNet (SPEC 7).

    python -m scripts.train_unet --unet_config_path configs/unet/stage2.yaml \\
        [--train_output_dir DIR] [--max_train_steps N] [--device cpu] [data.batch_size=4 ...]
    python -m scripts.train_unet --resume_from outputs/unet/train-2025_01_01-12_00_00 [--max_train_steps N]

Trailing KEY=VALUE arguments override config entries (OmegaConf dot-list). With --resume_from
and no --unet_config_path, the run folder's config.yaml is used. Several GPUs: `accelerate launch
-m scripts.train_unet ...` (see train_unet.sh). A bad config, missing data or checkpoint stops the
run before training with a one-line message and exit code 2.
"""

import argparse
import sys
from pathlib import Path

from latentsync.training.unet_trainer import TrainOptions, train
from scripts._cli import TRAIN_LOG_FORMAT, add_run_arguments, check_overrides, run_cli


def parse_args(argv=None) -> TrainOptions:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--unet_config_path", help="configs/unet/*.yaml (default with --resume_from: the run's config)")
    add_run_arguments(parser, device_help="auto (default), cpu, cuda, cuda:N or mps")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. data.batch_size=4")
    args = parser.parse_args(argv)
    check_overrides(parser, args.overrides)
    options = vars(args)
    options["show_progress"] = not options.pop("no_progress")
    return TrainOptions(**options)


def run(options: TrainOptions) -> None:
    run_dir = train(options)
    print(f"UNet training finished: {Path(run_dir)}")


def main(argv=None) -> int:
    return run_cli(lambda: run(parse_args(argv)), TRAIN_LOG_FORMAT)


if __name__ == "__main__":
    sys.exit(main())
