#!/usr/bin/env bash
# Create (or refresh) one of the two tested environments and install this package into it.
#
#   bash scripts/setup_env.sh current   # .venv-current: the newest releases: torch 2.15.0, NumPy 2.4,
#                                       # Lightning 2.6, TensorFlow 2.21 for hear-validator; no torchaudio
#   bash scripts/setup_env.sh harness   # .venv: torch 2.4.1 + torchaudio 2.4.1, s3prl 0.4.18, hear-eval-kit,
#                                       # xares 0.1.3 (reads its tars through torchaudio: no torchcodec)
#                                       # (s3prl needs torchaudio's sox bindings, gone since 2.9)
#
# Idempotent: does nothing when the stack's requirement files are unchanged since its last run.
set -euo pipefail
cd "$(dirname "$0")/.."
STACK=${1:-harness}
PYTHON=${PYTHON:-python3}
case "$STACK" in
    harness) VENV=${ATST_VENV:-.venv}; LOCK=requirements/harness.txt ;;
    current) VENV=${ATST_CURRENT_VENV:-.venv-current}; LOCK=requirements/current.txt ;;
    *) echo "usage: bash scripts/setup_env.sh [harness|current]" >&2; exit 2 ;;
esac

if [ "$STACK" = harness ] && ! ldconfig -p | grep -q 'libsox\.so '; then
    # s3prl's speech_commands and voxceleb1 downstreams read audio through torchaudio's sox bindings.
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing libsox-dev (needed by s3prl's downstream datasets)" >&2
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libsox-dev) >/dev/null
    else
        echo "warning: libsox.so not found; s3prl downstream tests need it (apt-get install libsox-dev)" >&2
    fi
fi

# Real sound for the online probe's tasks and the demo corpus (pretrain/training/rendered_sound.py):
# speech from espeak-ng and flite, General MIDI instruments from fluidsynth and a small soundfont.
if ! { command -v espeak-ng && command -v flite && command -v fluidsynth; } >/dev/null \
    || [ ! -f /usr/share/sounds/sf2/TimGM6mb.sf2 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing espeak-ng, flite, fluidsynth, timgm6mb-soundfont (real sound for the probe tasks)" >&2
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            espeak-ng flite fluidsynth timgm6mb-soundfont) >/dev/null
    else
        echo "warning: espeak-ng/flite/fluidsynth/timgm6mb-soundfont missing; the probe tests need them" >&2
    fi
fi

want=$(cat "$LOCK" requirements/hear-nodeps.txt requirements/xares-nodeps.txt setup.cfg pyproject.toml | sha256sum | cut -d' ' -f1)
stamp="$VENV/.atst-requirements"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
echo "setting up the $STACK stack in $VENV ($LOCK)" >&2
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
log="$VENV/setup.log"
pip_install() {
    if ! "$VENV/bin/python" -m pip install "$@" >>"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "setup failed: pip install $*  (full log: $log)" >&2
        exit 1
    fi
}
if [ "$STACK" = harness ]; then
    # pip 24.0: catalyst 22.4 (the first release that imports on Python 3.10+) has metadata that
    # pip >= 24.1 rejects. torch and torchaudio 2.4.1 come from PyPI (CUDA builds, run on the CPU).
    pip_install "pip==24.0"
    pip_install -r "$LOCK"
    pip_install --no-deps --ignore-requires-python -r requirements/hear-nodeps.txt
    pip_install --no-deps -r requirements/xares-nodeps.txt
    pip_install --no-deps --no-build-isolation -e .
else
    # torch first, alone, as a user has it before installing the package. 2.15.0 is newer than the
    # releases this machine kind keeps on disk, and its pip configuration caps torch at those:
    # PIP_CONSTRAINT=/dev/null lifts the cap for this install, and PyPI's build (CUDA libraries
    # included, run on the CPU here) comes from the registry. Then the rest of the lock file, then the
    # package with its dependencies resolved by pip (how a user installs it): it must keep that torch
    # and pull no torchaudio.
    export PIP_CONSTRAINT=/dev/null
    pip_install --upgrade pip
    pip_install "$(grep '^torch==' "$LOCK")"
    torch_before=$("$VENV/bin/python" -c 'import torch; print(torch.__version__)' 2>/dev/null)
    pip_install -r "$LOCK"
    pip_install --no-deps --ignore-requires-python -r requirements/hear-nodeps.txt
    pip_install -e ".[pretrain]"
    torch_after=$("$VENV/bin/python" -c 'import torch; print(torch.__version__)' 2>/dev/null)
    if [ "$torch_before" != "$torch_after" ]; then
        echo "setup failed: installing the package replaced torch $torch_before with $torch_after ($log)" >&2
        exit 1
    fi
    if "$VENV/bin/python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torchaudio') is None)"; then
        echo "setup failed: torchaudio was installed into the current stack ($log)" >&2
        exit 1
    fi
fi
echo "$want" > "$stamp"
echo "the $STACK stack is set up in $VENV ($(du -sh "$VENV" | cut -f1), ${SECONDS} s)" >&2
