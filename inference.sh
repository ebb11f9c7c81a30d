#!/usr/bin/env bash
# Dub a video: ./inference.sh --video_path IN.mp4 --audio_path SPEECH.wav --video_out_path OUT.mp4 [options]
# Defaults: LatentSync 1.6 (configs/unet/stage2_512.yaml + checkpoints/latentsync_unet.pt), 20 steps,
# guidance 1.5, seed 1247. Every option of scripts/inference.py passes through (--help lists them).
# Relative paths are taken from the folder you run it in.
set -euo pipefail
repo="$(cd "$(dirname "$0")" && pwd)"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
exec "$repo/.venv/bin/python" -m scripts.inference "$@"
