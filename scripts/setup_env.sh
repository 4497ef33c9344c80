#!/usr/bin/env bash
# Create (or refresh) the pinned, tested environment in .venv and install this package into it.
# Idempotent: does nothing when the requirement files are unchanged since the last run.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${ATST_VENV:-.venv}
PYTHON=${PYTHON:-python3}
want=$(cat requirements/lock.txt requirements/hear-nodeps.txt setup.cfg pyproject.toml | sha256sum | cut -d' ' -f1)
stamp="$VENV/.atst-requirements"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
echo "setting up $VENV (pinned stack in requirements/; the first run downloads about 5 GB)" >&2
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade "pip>=24"
"$VENV/bin/python" -m pip install -q -r requirements/lock.txt
"$VENV/bin/python" -m pip install -q --no-deps --ignore-requires-python -r requirements/hear-nodeps.txt
"$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e .
echo "$want" > "$stamp"
