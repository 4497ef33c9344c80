#!/usr/bin/env bash
# Main job on a built-in default (no downloads): set up the pinned environment, write an ATST
# checkpoint, check it with the real hear-validator and embed a few synthetic clips.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
VENV=${ATST_VENV:-.venv}
OUT=${ATST_DEMO_DIR:-demo_output}
mkdir -p "$OUT"
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-} TF_CPP_MIN_LOG_LEVEL=2
"$VENV/bin/python" -m pretrain init --arch tiny --seed 0 "$OUT/atst_tiny.ckpt"
"$VENV/bin/python" -m pretrain inspect "$OUT/atst_tiny.ckpt"
"$VENV/bin/hear-validator" atst_hear -m "$OUT/atst_tiny.ckpt" -d cpu 2>/dev/null | tail -n 3
"$VENV/bin/python" - "$OUT" <<'PY'
import sys, numpy as np, soundfile
out = sys.argv[1]
t = np.arange(int(2.5 * 16000)) / 16000
for name, wav in {"tone": np.sin(2 * np.pi * 440 * t), "chirp": np.sin(2 * np.pi * (200 * t + 400 * t**2)),
                  "noise": np.random.default_rng(0).normal(0, 0.3, t.size)}.items():
    soundfile.write(f"{out}/{name}.wav", (0.3 * wav).astype("float32"), 16000)
PY
"$VENV/bin/python" -m pretrain embed "$OUT/atst_tiny.ckpt" "$OUT"/tone.wav "$OUT"/chirp.wav "$OUT"/noise.wav \
    --out "$OUT/embeddings.npy"
