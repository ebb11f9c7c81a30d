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
import logging
import sys
from pathlib import Path

from latentsync.errors import EXIT_USER_ERROR, UserError
from latentsync.training.syncnet_trainer import TrainOptions, find_state_file, run_dir_of, train


def parse_args(argv=None) -> TrainOptions:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config_path", help="configs/syncnet/*.yaml (default with --resume_from: the run's config)")
    parser.add_argument("--train_output_dir", help="folder for run folders (overrides data.train_output_dir)")
    parser.add_argument("--max_train_steps", type=int, help="overrides run.max_train_steps")
    parser.add_argument("--device", help="auto (default), cpu, cuda or mps")
    parser.add_argument("--resume_from", help="run folder or checkpoints/training-state-<step>.pt to continue exactly")
    parser.add_argument("--run_name", help="run folder name (default train-YYYY_MM_DD-HH_MM_SS)")
    parser.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"],
                        help="default: fp16 on CUDA if run.mixed_precision_training, else no")
    parser.add_argument("--num_threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. data.batch_size=8")
    args = parser.parse_args(argv)
    for item in args.overrides:
        if "=" not in item:
            parser.error(f"override {item!r} is not KEY=VALUE")
    return TrainOptions(**vars(args))


def default_config(options: TrainOptions) -> TrainOptions:
    """Fill --config_path from the run folder when resuming without one."""
    if options.config_path:
        return options
    if not options.resume_from:
        raise UserError("--config_path is required (unless --resume_from names a run to continue)")
    options.config_path = str(run_dir_of(find_state_file(options.resume_from)) / "config.yaml")
    return options


def user_message(error: UserError) -> str:
    """The one-line message (a UserError raised in a DataLoader worker arrives wrapped in a traceback)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return "UserError"
    last = lines[-1]
    prefix = "latentsync.errors.UserError: "
    return last[len(prefix):] if last.startswith(prefix) else lines[0]


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        options = default_config(parse_args(argv))
        run_dir = train(options)
    except UserError as e:
        print(f"error: {user_message(e)}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(f"SyncNet training finished: {Path(run_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
