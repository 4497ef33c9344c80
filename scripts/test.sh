#!/usr/bin/env bash
# Set up both tested stacks, lint, then run the test suite on each (the README's test command).
#
#   bash scripts/test.sh                  # both stacks
#   bash scripts/test.sh current [ARGS]   # one stack; ARGS go to pytest
#   bash scripts/test.sh harness [ARGS]
#
# The harness stack (.venv) runs every test but the `learning` one (a minutes-long pretraining run
# judged by its probe, which does not depend on the stack; the current stack runs it). The current
# stack (.venv-current) runs every test that needs neither torchaudio nor s3prl (pytest markers,
# see pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
stacks=(current harness)
if [ $# -gt 0 ] && { [ "$1" = current ] || [ "$1" = harness ]; }; then
    stacks=("$1")
    shift
fi
for stack in "${stacks[@]}"; do
    bash scripts/setup_env.sh "$stack"
done
first=${stacks[0]}
[ "$first" = harness ] && lint_venv=${ATST_VENV:-.venv} || lint_venv=${ATST_CURRENT_VENV:-.venv-current}
"$lint_venv/bin/ruff" check .
for stack in "${stacks[@]}"; do
    if [ "$stack" = harness ]; then
        venv=${ATST_VENV:-.venv}
        selection=(-m "not learning")
    else
        venv=${ATST_CURRENT_VENV:-.venv-current}
        selection=(-m "not torchaudio and not s3prl")
    fi
    echo "== $stack stack: $("$venv/bin/python" -c 'import torch, numpy; print(f"torch {torch.__version__}, numpy {numpy.__version__}")')" >&2
    "$venv/bin/python" -m pytest -q -p no:cacheprovider "${selection[@]}" "$@"
done
