#!/usr/bin/env bash
# Create (or refresh) the pinned, tested environment in .venv and install this package into it.
# Idempotent: does nothing when the requirement files are unchanged since the last run.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${ATST_VENV:-.venv}
PYTHON=${PYTHON:-python3}
# s3prl's speech_commands and voxceleb1 downstreams read audio through torchaudio's sox bindings.
if ! ldconfig -p | grep -q 'libsox\.so '; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing libsox-dev (needed by s3prl's downstream datasets)" >&2
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libsox-dev) >/dev/null
    else
        echo "warning: libsox.so not found; s3prl downstream tests need it (apt-get install libsox-dev)" >&2
    fi
fi
want=$(cat requirements/lock.txt requirements/hear-nodeps.txt setup.cfg pyproject.toml | sha256sum | cut -d' ' -f1)
stamp="$VENV/.atst-requirements"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
echo "setting up $VENV (pinned stack in requirements/; the first run downloads about 5 GB)" >&2
"$PYTHON" -m venv "$VENV"
log="$VENV/setup.log"
pip_install() {
    if ! "$VENV/bin/python" -m pip install "$@" >>"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "setup failed: pip install $*  (full log: $log)" >&2
        exit 1
    fi
}
# pip 24.0: catalyst 22.4 (the first release that imports on Python 3.10+) has metadata that
# pip >= 24.1 rejects.
pip_install "pip==24.0"
pip_install -r requirements/lock.txt
pip_install --no-deps --ignore-requires-python -r requirements/hear-nodeps.txt
pip_install --no-deps --no-build-isolation -e .
echo "$want" > "$stamp"
