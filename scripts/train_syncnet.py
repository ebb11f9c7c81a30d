"""Train StableSyncNet.

    python -m scripts.train_syncnet --config_path configs/syncnet/syncnet_16_pixel_attn.yaml \\
        [--train_output_dir DIR] [--max_train_steps N] [--device cpu] [data.batch_size=8 ...]
    python -m scripts.train_syncnet --resume_from outputs/syncnet/train-2025_01_01-12_00_00 \\
        [--max_train_steps N]

Trailing KEY=VALUE arguments override config entries (OmegaConf dot-list). With --resume_from
and no --config_path, the run folder's config.yaml is used. Multi-GPU: `accelerate launch -m
scripts.train_syncnet ...` (see train_syncnet.sh). Exit code 2 with a one-line message on a bad
config, missing data or unusable checkpoint.
"""

import sys

from latentsync.cli_args import TRAIN_LOG_FORMAT, run_cli
from latentsync.training.options import training_command
from latentsync.training.syncnet_trainer import KIND, train


def main(argv=None) -> int:
    return run_cli(training_command(argv, __doc__, KIND, train, "configs/syncnet/*.yaml"), TRAIN_LOG_FORMAT)


if __name__ == "__main__":
    sys.exit(main())
