"""Audio files of a folder tree or a CSV/TSV manifest (``pretrain.training.data``): every step's
samples are a function of the seed and the step (``StepSampler``), so a resumed run reads what an
uninterrupted one would; unreadable files are skipped and counted."""

from __future__ import annotations

from torch.utils.data import DataLoader

from pretrain.training.data import CropDataset, StepSampler, collate_crops, list_audio
from pretrain.training.recipes import RECIPES


class FileSource:
    kind = "files"

    def __init__(self, config) -> None:
        self.config = config
        self.dataset = CropDataset(list_audio(config.data), config.crop_seconds, RECIPES[config.family].n_crops)

    @staticmethod
    def claims(data: str) -> bool:
        return True

    def layout(self) -> dict:
        return {"items": len(self.dataset), "loader_streams": None, "shuffle_buffer": None}

    def dataloader(self, *, rank: int, world: int, start_batch: int, end_batch: int) -> DataLoader:
        c = self.config
        sampler = StepSampler(
            len(self.dataset), c.batch_size, seed=c.seed, rank=rank, world=world, start_batch=start_batch,
            end_batch=end_batch,
        )
        return DataLoader(
            self.dataset,
            batch_sampler=sampler,
            collate_fn=collate_crops,
            num_workers=c.num_workers,
            persistent_workers=c.num_workers > 0,
        )
