#!/usr/bin/env bash
# Train the LatentSync UNet (run from the repository root: config paths such as checkpoints/...
# are relative to the working directory). All arguments go to scripts/train_unet.py, e.g.
#   ./train_unet.sh --unet_config_path configs/unet/stage2.yaml
#   ./train_unet.sh --unet_config_path configs/unet/debug_cpu.yaml --device cpu      # CPU smoke run
#   ./train_unet.sh --resume_from outputs/unet/train-2025_01_01-12_00_00
# Several GPUs: NUM_GPUS=8 ./train_unet.sh ... (accelerate launch, one process per GPU).
# Python, GPUs and no-argument behaviour: scripts/launch.sh (the same for every trainer).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/scripts/launch.sh"
launch_trainer scripts.train_unet "$@"
