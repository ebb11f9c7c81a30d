#!/usr/bin/env bash
# Train StableSyncNet (run from the repository root to use the configs' relative data and
# checkpoint paths). All arguments go to scripts/train_syncnet.py, for example
#   ./train_syncnet.sh --config_path configs/syncnet/syncnet_16_pixel_attn.yaml
#   ./train_syncnet.sh --resume_from outputs/syncnet/<run folder>
#   ./train_syncnet.sh --config_path my.yaml --device cpu data.batch_size=8
# Several GPUs: NUM_GPUS=8 ./train_syncnet.sh ...; an accelerate config: ACCELERATE_CONFIG_FILE=FILE
# (the file `accelerate config` writes, ~/.cache/huggingface/accelerate/default_config.yaml, is no
# longer picked up by itself: name it, as for every trainer).
# Python, GPUs and no-argument behaviour: scripts/launch.sh (the same for every trainer).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/scripts/launch.sh"
launch_trainer scripts.train_syncnet "$@"
