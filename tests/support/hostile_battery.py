"""Try every hostile file of ``tests.support.hostile`` on the package's readers, in this one process,
and write what each call raised and the process's peak memory (``ru_maxrss``) to a JSON report.

    python -m tests.support.hostile_battery FOLDER REPORT.json

``FOLDER`` holds the files (``hostile.build_all``). The baseline is taken after a real tiny
checkpoint has been loaded and embedded once, so the allocator and imports are warm; the report's
``peak_growth`` is what the hostile files added on top of it.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path

import torch

from pretrain import ATSTFeatureExtractor, inspect_checkpoint, load_encoder, read_checkpoint, write_random_checkpoint
from pretrain.model.audio_io import load_audio
from pretrain.training.data import read_crops, scan_dataset
from tests.support.hostile import ALL, file_name

CALLS = {
    "inspect": inspect_checkpoint,
    "load_encoder": load_encoder,
    "read_checkpoint": read_checkpoint,
    "load_audio": load_audio,
    "read_crops": lambda path: read_crops(path, 32000, n_crops=2, seed=0),
}
DURATION_BUDGET_S = "2"  # so that a 3 s file tries the duration budget cheaply


def peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kB


def main(folder: Path, report_path: Path) -> None:
    os.environ["ATST_MAX_AUDIO_SECONDS"] = DURATION_BUDGET_S
    real = write_random_checkpoint(folder / "real_tiny.ckpt", "tiny")
    extractor = ATSTFeatureExtractor.from_checkpoint(real)
    tone = torch.sin(torch.arange(32000) / 16000 * 2 * torch.pi * 440) * 0.3
    with torch.no_grad():
        extractor.scene_embeddings([tone], n_blocks=1)
        read_checkpoint(real)
    baseline = peak_bytes()
    results: dict[str, list[dict]] = {}
    for name, case in ALL.items():
        path = folder / file_name(case)
        results[name] = []
        for call in case.calls:
            before = peak_bytes()
            try:
                CALLS[call](path)
                outcome = {"call": call, "error": None, "message": "returned without an error"}
            except Exception as err:  # noqa: BLE001 - the report records whatever escapes
                outcome = {"call": call, "error": type(err).__name__, "message": str(err)[:2000]}
            outcome["peak_growth"] = peak_bytes() - before
            results[name].append(outcome)
    with torch.no_grad():  # a clip whose samples are finite but absurd (1e20)
        try:
            extractor.scene_embeddings([tone * 1e20], n_blocks=1)
            loud = {"error": None, "message": "returned without an error"}
        except Exception as err:  # noqa: BLE001
            loud = {"error": type(err).__name__, "message": str(err)}
    # a scan over the hostile audio files and one good one: counts them, does not stop
    scan_dir = folder / "scan"
    scan_dir.mkdir()
    for case in ALL.values():
        source = folder / file_name(case)
        if file_name(case).endswith((".wav", ".flac")) and source.is_file():
            (scan_dir / source.name).symlink_to(source)
    import soundfile

    soundfile.write(scan_dir / "good.wav", tone.numpy(), 16000)
    scan = scan_dataset(scan_dir, crop_seconds=1.0, progress=False)
    report = {
        "baseline": baseline,
        "peak_growth": peak_bytes() - baseline,
        "cases": results,
        "loud_clip": loud,
        "scan": {"files": scan.files, "readable": scan.readable, "problems": scan.problems},
    }
    report_path.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
