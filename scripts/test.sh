#!/usr/bin/env bash
# Set up both tested stacks, lint, then run the test suite on each (the README's test command).
#
#   bash scripts/test.sh                  # both stacks
#   bash scripts/test.sh current [ARGS]   # one stack; ARGS go to pytest
#   bash scripts/test.sh harness [ARGS]
#
# The current stack (.venv-current) runs every test that needs neither torchaudio, s3prl nor xares; the
# harness stack (.venv) runs every test but the `stack_independent` ones (multi-process DDP, kill +
# resume and learning runs, minutes each, which test the package and Lightning, not the stack: run
# once, on the current stack, they keep the whole CI run near 35 minutes). Markers: pyproject.toml.
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
# A stack's run peaks at about 4.5 GB of checkpoints and runs in the temp dir (measured on a full
# run); say so up front rather than fail deep inside a checkpoint write.
free_gb=$(python3 -c 'import shutil, tempfile; print(shutil.disk_usage(tempfile.gettempdir()).free // 2**30)')
if [ "$free_gb" -lt 5 ]; then
    echo "scripts/test.sh: only ${free_gb} GB free in $(python3 -c 'import tempfile; print(tempfile.gettempdir())'); the tests need about 5 GB there (set TMPDIR to a larger disk)" >&2
    exit 1
fi
first=${stacks[0]}
[ "$first" = harness ] && lint_venv=${ATST_VENV:-.venv} || lint_venv=${ATST_CURRENT_VENV:-.venv-current}
"$lint_venv/bin/ruff" check .
for stack in "${stacks[@]}"; do
    if [ "$stack" = harness ]; then
        venv=${ATST_VENV:-.venv}
        selection=(-m "not stack_independent")
    else
        venv=${ATST_CURRENT_VENV:-.venv-current}
        selection=(-m "not torchaudio and not s3prl and not xares")
    fi
    echo "== $stack stack: $("$venv/bin/python" -c 'import torch, numpy; print(f"torch {torch.__version__}, numpy {numpy.__version__}")')" >&2
    "$venv/bin/python" -m pytest -q -p no:cacheprovider --durations=15 "${selection[@]}" "$@"
done
