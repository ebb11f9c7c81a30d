"""Train a small VAE (diffusers AutoencoderKL) on aligned face clips.

    python -m scripts.train_vae --config_path configs/vae/learnability.yaml \\
        [--train_output_dir DIR] [--run_name NAME] [--max_train_steps N] [--device cpu] \\
        [data.train_data_dir=aligned/ ...]
    python -m scripts.train_vae --resume_from outputs/learnability/vae/NAME [--max_train_steps N]

The VAE to use afterwards (`--vae_path`, the UNet config's `ckpt.vae_path`) is the run folder's
`vae/` (diffusers format; its config holds the latent scaling_factor measured on the faces);
every checkpoint step is also kept as `checkpoints/vae-<step>/`. Trailing KEY=VALUE arguments
override config entries (OmegaConf dot-list). With --resume_from and no --config_path, the run
folder's config.yaml is used. Exit code 2 with a one-line message on a bad config, missing data
or unusable checkpoint.
"""

import sys

from latentsync.cli_args import TRAIN_LOG_FORMAT, run_cli
from latentsync.training.options import training_command
from latentsync.training.vae_trainer import KIND, train


def main(argv=None) -> int:
    return run_cli(training_command(argv, __doc__, KIND, train, "configs/vae/*.yaml"), TRAIN_LOG_FORMAT)


if __name__ == "__main__":
    sys.exit(main())
