"""Where pretraining audio comes from: one module per kind of source behind one small interface.

``--data-format files`` reads a folder tree or a CSV/TSV manifest (``files.py``), ``shards`` reads
WebDataset tar shards with their index (``shards.py``); ``auto`` (the default) guesses from
``--data``: ``pipe:`` URLs, brace patterns, ``.tar`` paths, ``::`` lists and folders holding
``.tar`` files are shards, anything else files. Every source gives an endless, seeded sample order
that a resumed run continues exactly (each module's docstring states its guarantee).

A new source is one module with a class like these (``kind``, ``claims``, ``layout``,
``dataloader``) and its line in ``SOURCES``.
"""

from __future__ import annotations

from typing import Protocol

from torch.utils.data import DataLoader

from pretrain.training.sources.files import FileSource
from pretrain.training.sources.shards import ShardSource


class DataSource(Protocol):
    kind: str

    @staticmethod
    def claims(data: str) -> bool:
        """Whether ``--data`` looks like this kind of source (the ``auto`` guess)."""

    def layout(self) -> dict:
        """What fixes the sample order besides the seed and the world: ``items``, ``loader_streams``,
        ``shuffle_buffer`` (a resume under another layout warns)."""

    def dataloader(self, *, rank: int, world: int, start_batch: int, end_batch: int) -> DataLoader:
        """The loader of one rank from batch ``start_batch`` (a resume) to ``end_batch``."""


SOURCES: dict[str, type] = {"files": FileSource, "shards": ShardSource}
GUESS_ORDER = ("shards", "files")  # the first that claims ``--data``; files claim anything


def open_source(config) -> DataSource:
    """The run's data source: ``config.data_format``, or the guess from ``config.data``."""
    kind = config.data_format
    if kind == "auto":
        kind = next(name for name in GUESS_ORDER if SOURCES[name].claims(config.data))
    return SOURCES[kind](config)
