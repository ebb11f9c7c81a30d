#!/usr/bin/env bash
# Train a VAE (when Stable Diffusion's sd-vae-ft-mse cannot be used). All arguments go to
# scripts/train_vae.py, for example
#   ./train_vae.sh --config_path configs/vae/learnability.yaml
#   ./train_vae.sh --resume_from <run folder>
# The trained VAE is <run>/vae/: pass it as --vae_path (inference) or ckpt.vae_path (UNet config).
# Several GPUs: NUM_GPUS=8 ./train_vae.sh ...; an accelerate config: ACCELERATE_CONFIG_FILE=FILE.
# Python, GPUs and no-argument behaviour: scripts/launch.sh (the same for every trainer).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/scripts/launch.sh"
launch_trainer scripts.train_vae "$@"
