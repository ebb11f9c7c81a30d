# Sourced by the shell entry points at the repository root (inference.sh, data_processing_pipeline.sh,
# train_unet.sh, train_syncnet.sh, train_vae.sh); not run by itself. One rule for each choice:
#
#   Python     $PYTHON if set, else the repository's .venv/bin/python (what setup_env.sh makes),
#              else python3 from PATH.
#   Arguments  all are passed on to the tool (`python -m scripts.<tool>`). Given none, a launcher
#              prints the tool's --help and exits with 2: nothing starts by surprise.
#   GPUs       (trainers) NUM_GPUS=N with N > 1 runs `accelerate launch --multi_gpu --num_processes N`,
#              one process per GPU; ACCELERATE_CONFIG_FILE=FILE (several machines, or any accelerate
#              setting) runs `accelerate launch --config_file FILE`, with NUM_GPUS added when given.
#              Otherwise the trainer is one plain Python process.
#   Paths      relative paths are taken from the folder you run the launcher in; the repository
#              is put on PYTHONPATH so the launcher works from any folder.

LATENTSYNC_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$LATENTSYNC_REPO${PYTHONPATH:+:$PYTHONPATH}"
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$LATENTSYNC_REPO/.venv/bin/python" ]; then PYTHON="$LATENTSYNC_REPO/.venv/bin/python"; else PYTHON=python3; fi
fi

# usage_unless_arguments MODULE ARGS...: with no ARGS, the tool's --help on stderr and exit 2
usage_unless_arguments() {
    local module="$1"
    shift
    if [ "$#" -eq 0 ]; then
        "$PYTHON" -m "$module" --help >&2
        echo "error: no arguments given (the help above lists them)" >&2
        exit 2
    fi
}

# launch_tool MODULE ARGS...: run one Python process
launch_tool() {
    local module="$1"
    shift
    usage_unless_arguments "$module" "$@"
    exec "$PYTHON" -m "$module" "$@"
}

# launch_trainer MODULE ARGS...: one process, or accelerate launch by the GPU rule above
launch_trainer() {
    local module="$1"
    shift
    usage_unless_arguments "$module" "$@"
    local gpus="${NUM_GPUS:-1}"
    if ! [[ "$gpus" =~ ^[1-9][0-9]*$ ]]; then
        echo "error: NUM_GPUS=$gpus: expected a positive whole number" >&2
        exit 2
    fi
    local accelerate=()
    if [ -n "${ACCELERATE_CONFIG_FILE:-}" ]; then
        accelerate+=(--config_file "$ACCELERATE_CONFIG_FILE")
    fi
    if [ "$gpus" -gt 1 ]; then
        accelerate+=(--multi_gpu --num_processes "$gpus")
    fi
    if [ "${#accelerate[@]}" -gt 0 ]; then
        exec "$PYTHON" -m accelerate.commands.launch "${accelerate[@]}" -m "$module" "$@"
    fi
    exec "$PYTHON" -m "$module" "$@"
}
