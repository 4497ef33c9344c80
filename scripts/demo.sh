#!/usr/bin/env bash
# Main job on a built-in default (no downloads): set up the pinned environment, synthesise a small
# labelled-synthetic audio corpus, pretrain a tiny ATST on it on the CPU (a few minutes), check the
# new checkpoint with the real hear-validator and embed a few clips. Outputs in demo_output/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
VENV=${ATST_VENV:-.venv}
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-} TF_CPP_MIN_LOG_LEVEL=2
"$VENV/bin/python" -m pretrain demo --out "${ATST_DEMO_DIR:-demo_output}" "$@"
