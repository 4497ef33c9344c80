#!/usr/bin/env bash
# Main job on a built-in default (no data downloads): set up the current stack (.venv-current: the
# newest releases, torch 2.15, no torchaudio), render a small corpus of real sound and four probe
# tasks (a synthetic corpus where the Debian tools are missing), pretrain a tiny ATST on it on the
# CPU with the online probe (a few minutes), check the new checkpoint with the real hear-validator
# and embed a few clips. Outputs in demo_output/; flags go to `python -m pretrain demo` (--family frame).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh current
VENV=${ATST_CURRENT_VENV:-.venv-current}
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-} TF_CPP_MIN_LOG_LEVEL=2
"$VENV/bin/python" -m pretrain demo --out "${ATST_DEMO_DIR:-demo_output}" "$@"
