#!/usr/bin/env bash
# Train the LatentSync UNet (run from the repository root: config paths such as checkpoints/...
# are relative to the working directory). All arguments go to scripts/train_unet.py, e.g.
#   ./train_unet.sh --unet_config_path configs/unet/stage2.yaml
#   ./train_unet.sh --unet_config_path configs/unet/debug_cpu.yaml --device cpu      # CPU smoke run
#   ./train_unet.sh --resume_from outputs/unet/train-2025_01_01-12_00_00
# Several GPUs: NUM_GPUS=8 ./train_unet.sh ... (uses `accelerate launch`, one process per GPU).
# PYTHON overrides the interpreter (default: the repository's .venv if present, else python).
set -euo pipefail
REPO="$(cd "$(dirname "$0")" && pwd)"
PYTHON="${PYTHON:-$( [ -x "$REPO/.venv/bin/python" ] && echo "$REPO/.venv/bin/python" || echo python )}"
NUM_GPUS="${NUM_GPUS:-1}"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
if [ "$NUM_GPUS" -gt 1 ]; then
    exec "$PYTHON" -m accelerate.commands.launch --num_processes "$NUM_GPUS" --multi_gpu \
        -m scripts.train_unet "$@"
fi
exec "$PYTHON" -m scripts.train_unet "$@"
