#!/usr/bin/env bash
# Timbre on Linux.
#   ./start.sh [--host H] [--port P] [--base-model DIR]   set up .venv, launch the app (http://127.0.0.1:7860)
#   ./start.sh test [PYTEST ARGS]                           set up .venv with the test needs, run the test suite
set -euo pipefail
cd "$(dirname "$0")"

mode=app
if [ "${1:-}" = test ]; then mode=test; shift; fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "Creating .venv with $($python --version)"
  "$python" -m venv .venv
fi

req=requirements.txt
[ "$mode" = test ] && req=requirements-test.txt
# Reinstall only when a requirements file changed.
stamp=".venv/.installed-$mode-$(cat requirements.txt "$req" requirements-nodeps.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install --upgrade pip
  .venv/bin/python -m pip install -r "$req"
  # Packages with wrong declared dependencies, without them (requirements-nodeps.txt says why).
  .venv/bin/python -m pip install --no-deps -r requirements-nodeps.txt
  touch "$stamp"
fi
# With an NVIDIA GPU, the CUDA 12 cuBLAS that faster-whisper needs (requirements-gpu.txt says why).
if [ "$mode" = app ] && command -v nvidia-smi >/dev/null && [ ! -f .venv/.installed-gpu-$(sha256sum requirements-gpu.txt | cut -c1-16) ]; then
  .venv/bin/python -m pip install -r requirements-gpu.txt && touch ".venv/.installed-gpu-$(sha256sum requirements-gpu.txt | cut -c1-16)"
fi

if [ "$mode" = test ]; then
  # The tests speak with espeak-ng, convert with sox, drive a real headless Chromium, and
  # Gradio encodes streamed audio with ffmpeg.
  missing=()
  command -v espeak-ng >/dev/null || missing+=(espeak-ng)
  command -v sox >/dev/null || missing+=(sox)
  command -v ffmpeg >/dev/null || missing+=(ffmpeg)
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    else
      echo "The tests need these system packages: ${missing[*]}" >&2
      echo "Install them, e.g.: sudo apt-get install ${missing[*]}" >&2
      exit 1
    fi
  fi
  exec .venv/bin/python -m pytest "$@"
fi
exec .venv/bin/python -m webui "$@"
