"""`VideoDataModule`: the LightningDataModule every stage trains on.

Batches are dicts with video (b,t,c,H,W) float in [-1,1] and, when the data has them, actions (b,t-1).
`data` is a genie dataset folder (Arrow, or its Parquet shards with `source: parquet`), or a folder of
video files (`source: videos`). Under DDP each rank reads a disjoint share: a DistributedSampler for the
map-style sources, shard/episode division for streaming.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, DistributedSampler

from data_pipelines.clips import ClipDataset, StreamingClipDataset, VideoFolderClipDataset
from data_pipelines.errors import GenieInputError
from data_pipelines.storage import CARD_NAME


class VideoDataModule(L.LightningDataModule):
    def __init__(self, data: str, clip_len: int = 16, stride: int = 1, batch_size: int = 8, num_workers: int = 2,
                 source: str = "auto", resolution: int = 64, val_clips: int = 256, train_split: str = "train",
                 val_split: str = "val", seed: int = 0):
        """
        Args:
            data: dataset folder or video folder.
            clip_len: frames per clip.
            stride: frame stride within a clip.
            batch_size: clips per batch and per device.
            num_workers: DataLoader worker processes.
            source: auto | arrow | parquet | videos (auto: arrow when DIR holds a genie dataset card).
            resolution: frame size for `videos` (frames are centre-cropped and resized).
            val_clips: fixed number of validation clips (seeded), so validation numbers are comparable.
            train_split / val_split: splits to read.
            seed: seeds the fixed validation subset and the streaming clip starts.
        """
        super().__init__()
        self.save_hyperparameters()
        if source not in ("auto", "arrow", "parquet", "videos"):
            raise GenieInputError(f"data source must be auto, arrow, parquet or videos, got {source!r}")
        if not Path(data).exists():
            raise GenieInputError(f"{data}: no such data folder")
        if source == "auto":
            source = "arrow" if (Path(data) / CARD_NAME).is_file() else "videos"
        self.source = source
        self.train_set = self.val_set = None

    def _make(self, split: str, num_clips: int | None):
        h = self.hparams
        if self.source == "arrow":
            return ClipDataset(h.data, split, h.clip_len, h.stride, num_clips=num_clips, seed=h.seed)
        if self.source == "videos":
            return VideoFolderClipDataset(h.data, split, h.clip_len, h.stride, resolution=h.resolution,
                                          num_clips=num_clips, seed=h.seed)
        return StreamingClipDataset.from_dataset_dir(h.data, split, clip_len=h.clip_len, stride=h.stride, seed=h.seed)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None and stage in (None, "fit"):
            self.train_set = self._make(self.hparams.train_split, None)
        if self.val_set is None and stage in (None, "fit", "validate"):
            try:
                self.val_set = self._make(self.hparams.val_split, self.hparams.val_clips)
            except GenieInputError as e:
                if stage == "validate":
                    raise
                print(f"genie: no validation data ({e}); validation is skipped")
                self.val_set = None

    @staticmethod
    def _world() -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _loader(self, ds, train: bool) -> DataLoader:
        h = self.hparams
        kw = dict(batch_size=h.batch_size, num_workers=h.num_workers, pin_memory=torch.cuda.is_available(),
                  persistent_workers=h.num_workers > 0, drop_last=train)
        if isinstance(ds, StreamingClipDataset):
            return DataLoader(ds, **kw)
        rank, world = self._world()
        if world > 1:  # explicit, so the share is disjoint with or without a Trainer
            sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=train, seed=h.seed, drop_last=train)
            return DataLoader(ds, sampler=sampler, **kw)
        gen = torch.Generator().manual_seed(h.seed)
        return DataLoader(ds, shuffle=train, generator=gen if train else None, **kw)

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            self.setup("fit")
        return self._loader(self.train_set, train=True)

    def val_dataloader(self):
        if self.val_set is None:
            return []
        return self._loader(self.val_set, train=False)
