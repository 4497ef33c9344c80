"""Which optional install a command needs, said in one line instead of a traceback.

The core install (``pip install atst-plugins``) holds inference: the models, checkpoints, features,
``atst_hear`` and ``atst_upstream``'s expert. Training, fine-tuning, plots and shards need the
``[pretrain]`` extra; the harness launchers need their harness.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

HEAR_TOOLS = "pip install --no-deps hearvalidator==2021.0.6 heareval==2021.1.3"
INSTALL = {
    "pretrain": 'pip install "atst-plugins[pretrain]"',
    "hear": f'pip install "atst-plugins[hear]" && {HEAR_TOOLS}',
    "s3prl": 'pip install "atst-plugins[s3prl]" (torch 2.4.1: s3prl 0.4.18 needs torchaudio < 2.9)',
}
PRETRAIN_MODULES = ("lightning", "yaml", "webdataset", "safetensors", "matplotlib", "tensorboard", "tqdm")
EXTRA_OF_MODULE = {
    **dict.fromkeys(PRETRAIN_MODULES, "pretrain"),
    **dict.fromkeys(("heareval", "hearvalidator", "tensorflow", "pytorch_lightning"), "hear"),
    **dict.fromkeys(("s3prl", "torchaudio"), "s3prl"),
}


def missing_extra(err: ModuleNotFoundError, command: str) -> str | None:
    """The one-line error for a module an extra provides, or None for any other missing module."""
    extra = EXTRA_OF_MODULE.get((err.name or "").split(".")[0])
    if extra is None:
        return None
    return f"error: {command} needs the [{extra}] extra (no module named {err.name!r}): {INSTALL[extra]}"


@contextlib.contextmanager
def extras_named(command: str) -> Iterator[None]:
    """Run a command's body; a missing optional module ends it with exit status 2 and one line."""
    try:
        yield
    except ModuleNotFoundError as err:
        message = missing_extra(err, command)
        if message is None:
            raise
        print(message, file=sys.stderr)
        raise SystemExit(2) from None
