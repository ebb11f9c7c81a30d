#!/usr/bin/env bash
# Train StableSyncNet. All arguments go to scripts/train_syncnet.py, for example
#   ./train_syncnet.sh --config_path configs/syncnet/syncnet_16_pixel_attn.yaml
#   ./train_syncnet.sh --resume_from outputs/syncnet/<run folder>
#   ./train_syncnet.sh --config_path my.yaml --device cpu data.batch_size=8
# Relative paths are taken from the folder you run it in (run it from the repository root to
# use the configs' relative data and checkpoint paths). With an accelerate config (`accelerate
# config`, or ACCELERATE_CONFIG_FILE) the run goes through `accelerate launch` (several GPUs /
# machines); otherwise it is one plain Python process.
set -euo pipefail
REPO="$(cd "$(dirname "$0")" && pwd)"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
    if [ -x "$REPO/.venv/bin/python" ]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi
if [ "$#" -eq 0 ]; then
    set -- --config_path "$REPO/configs/syncnet/syncnet_16_pixel_attn.yaml"
fi

ACCELERATE_CONFIG="${ACCELERATE_CONFIG_FILE:-${HF_HOME:-$HOME/.cache/huggingface}/accelerate/default_config.yaml}"
if [ -f "$ACCELERATE_CONFIG" ] && "$PYTHON" -c "import accelerate" 2>/dev/null; then
    exec "$PYTHON" -m accelerate.commands.launch --config_file "$ACCELERATE_CONFIG" -m scripts.train_syncnet "$@"
fi
exec "$PYTHON" -m scripts.train_syncnet "$@"
