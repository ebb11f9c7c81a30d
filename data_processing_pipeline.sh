#!/usr/bin/env bash
# Raw talking-head videos -> 25 fps / 16 kHz, face-aligned, in-sync, good-quality clips.
# Usage: ./data_processing_pipeline.sh --input_dir RAW --output_dir OUT [--num_workers N]
#        [--resolution 256|512] [--skip_stages 7,8] [--ray_address auto|local] ... (--help lists all)
# Relative paths (including --checkpoints_dir, default checkpoints) are taken from the folder
# you run it in. Re-running the same command resumes an interrupted run.
# Python and no-argument behaviour: scripts/launch.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/scripts/launch.sh"
launch_tool scripts.data_processing_pipeline "$@"
