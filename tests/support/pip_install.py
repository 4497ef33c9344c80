"""What pip would install beside the running stack, as a user's pip would decide it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# This machine kind's pip configuration caps torch at the releases it keeps on disk; a user's pip has
# no such cap, so the installs in the tests run without it.
USER_PIP = dict(os.environ, PIP_CONSTRAINT="/dev/null", PIP_DISABLE_PIP_VERSION_CHECK="1")


def would_install(extra: str) -> set[str]:
    """The distributions ``pip install REPO[extra]`` would install here (a dry run's report)."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", "-", "--no-build-isolation"]
        + [f"{REPO}[{extra}]"],
        capture_output=True,
        text=True,
        env=USER_PIP,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return {item["metadata"]["name"].lower() for item in json.loads(out.stdout)["install"]}
