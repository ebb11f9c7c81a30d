"""Train or fine-tune the LatentSync UNet.

    python -m scripts.train_unet --unet_config_path configs/unet/stage2.yaml \\
        [--train_output_dir DIR] [--max_train_steps N] [--device cpu] [data.batch_size=4 ...]
    python -m scripts.train_unet --resume_from outputs/unet/train-2025_01_01-12_00_00 [--max_train_steps N]

Trailing KEY=VALUE arguments override config entries (OmegaConf dot-list). With --resume_from
and no --unet_config_path, the run folder's config.yaml is used. Several GPUs: `accelerate launch
-m scripts.train_unet ...` (see train_unet.sh). A bad config (an unknown or mistyped key in the
file or an override included), missing data or checkpoint stops the run before training with a
one-line message and exit code 2.
"""

import sys

from latentsync.cli_args import TRAIN_LOG_FORMAT, run_cli
from latentsync.training.options import training_command
from latentsync.training.unet_trainer import KIND, train


def main(argv=None) -> int:
    return run_cli(training_command(argv, __doc__, KIND, train, "configs/unet/*.yaml"), TRAIN_LOG_FORMAT)


if __name__ == "__main__":
    sys.exit(main())
