"""WebDataset tar shards with their index (``pretrain.training.shard_stream``): each pass deals a
seeded shard permutation to the ``ranks x workers`` streams, so a resumed run reads exactly what an
uninterrupted one would with the same layout; corrupt members and cut-off shards are skipped and
counted."""

from __future__ import annotations

from torch.utils.data import DataLoader

from pretrain.training.recipes import RECIPES
from pretrain.training.shard_stream import ShardStream, is_shard_source, resolve_shards


class ShardSource:
    kind = "shards"

    def __init__(self, config) -> None:
        self.config = config
        self.shards = resolve_shards(config.data, config.shard_index or None)

    @staticmethod
    def claims(data: str) -> bool:
        return is_shard_source(data)

    def layout(self) -> dict:
        c = self.config
        return {
            "items": sum(s.samples for s in self.shards),
            "loader_streams": max(c.num_workers, 1),
            "shuffle_buffer": c.shuffle_buffer,
        }

    def dataloader(self, *, rank: int, world: int, start_batch: int, end_batch: int) -> DataLoader:
        c = self.config
        stream = ShardStream(
            self.shards,
            crop_seconds=c.crop_seconds,
            n_crops=RECIPES[c.family].n_crops,
            batch_size=c.batch_size,
            seed=c.seed,
            rank=rank,
            world=world,
            workers=max(c.num_workers, 1),
            start_batch=start_batch,
            end_batch=end_batch,
            shuffle_buffer=c.shuffle_buffer,
        )
        return DataLoader(stream, batch_size=None, num_workers=c.num_workers, persistent_workers=c.num_workers > 0)
