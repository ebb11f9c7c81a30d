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
import logging
import sys
from pathlib import Path

from latentsync.errors import EXIT_USER_ERROR, UserError
from latentsync.training.unet_trainer import TrainOptions, train


def parse_args(argv=None) -> TrainOptions:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--unet_config_path", help="configs/unet/*.yaml (default with --resume_from: the run's config)")
    parser.add_argument("--train_output_dir", help="folder for run folders (overrides data.train_output_dir)")
    parser.add_argument("--max_train_steps", type=int, help="overrides run.max_train_steps")
    parser.add_argument("--device", help="auto (default), cpu, cuda, cuda:N or mps")
    parser.add_argument("--resume_from", help="run folder or checkpoints/training-state-<step>.pt to continue exactly")
    parser.add_argument("--run_name", help="run folder name (default train-YYYY_MM_DD-HH_MM_SS)")
    parser.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"],
                        help="default: fp16 on CUDA if run.mixed_precision_training, else no")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. data.batch_size=4")
    args = parser.parse_args(argv)
    for item in args.overrides:
        if "=" not in item:
            parser.error(f"override {item!r} is not KEY=VALUE")
    options = vars(args)
    options["show_progress"] = not options.pop("no_progress")
    return TrainOptions(**options)


def user_message(error: UserError) -> str:
    """The one-line message (a UserError raised in a DataLoader worker arrives wrapped in a traceback)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return "UserError"
    prefix = "latentsync.errors.UserError: "
    return lines[-1][len(prefix):] if lines[-1].startswith(prefix) else lines[0]


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run_dir = train(parse_args(argv))
    except UserError as e:
        print(f"error: {user_message(e)}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(f"UNet training finished: {Path(run_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
