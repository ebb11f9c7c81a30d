#!/usr/bin/env bash
# Dub a video: ./inference.sh --video_path IN.mp4 --audio_path SPEECH.wav --video_out_path OUT.mp4 [options]
# Defaults: LatentSync 1.6 (configs/unet/stage2_512.yaml + checkpoints/latentsync_unet.pt), 20 steps,
# guidance 1.5, seed 1247. Every option of scripts/inference.py passes through (--help lists them).
# Python, paths and no-argument behaviour: scripts/launch.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/scripts/launch.sh"
launch_tool scripts.inference "$@"
