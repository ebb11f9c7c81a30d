#!/usr/bin/env bash
# Train StableSyncNet. All arguments go to scripts/train_syncnet.py, for example
#   ./train_syncnet.sh --config_path configs/syncnet/syncnet_16_pixel_attn.yaml
#   ./train_syncnet.sh --resume_from outputs/syncnet/<run folder>
#   ./train_syncnet.sh --config_path my.yaml --device cpu data.batch_size=8
# With an accelerate config (`accelerate config`, or ACCELERATE_CONFIG_FILE) the run goes through
# `accelerate launch` (several GPUs / machines); otherwise it is one plain Python process.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if [ "$#" -eq 0 ]; then
    set -- --config_path configs/syncnet/syncnet_16_pixel_attn.yaml
fi

ACCELERATE_CONFIG="${ACCELERATE_CONFIG_FILE:-${HF_HOME:-$HOME/.cache/huggingface}/accelerate/default_config.yaml}"
if [ -f "$ACCELERATE_CONFIG" ] && "$PYTHON" -c "import accelerate" 2>/dev/null; then
    exec "$PYTHON" -m accelerate.commands.launch --config_file "$ACCELERATE_CONFIG" -m scripts.train_syncnet "$@"
fi
exec "$PYTHON" -m scripts.train_syncnet "$@"
