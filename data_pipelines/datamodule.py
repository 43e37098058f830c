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
from data_pipelines.storage import CARD_NAME
from genie.core.errors import GenieInputError


class ResumableSampler(DistributedSampler):
    """The shuffled (or ordered) share of one rank, a pure function of (seed, epoch), that can start mid-epoch.

    Lightning calls `set_epoch` at every epoch; `start_at(epoch, batches)` makes the next pass over
    that epoch skip the batches a killed run had already trained on, so a resumed run sees exactly the
    clips the unbroken run would have seen next. `__len__` stays the full epoch: Lightning counts the
    skipped batches itself (its restored batch progress).
    """

    def __init__(self, dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self._skip_epoch, self._skip = -1, 0

    def start_at(self, epoch: int, items: int) -> None:
        self._skip_epoch, self._skip = epoch, items

    def __iter__(self):
        order = list(super().__iter__())
        if self.epoch == self._skip_epoch:
            order, self._skip_epoch = order[self._skip:], -1
        return iter(order)


class ResumableDataLoader(DataLoader):
    """A DataLoader with `state_dict`/`load_state_dict`, so Lightning saves its position in every checkpoint.

    The position is (epoch, batches of this epoch the trainer has consumed), read from the trainer's
    own progress through `position` rather than counted here, because Lightning and the workers fetch
    batches ahead of the step that uses them.
    """

    def __init__(self, *args, position=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._position = position

    def state_dict(self) -> dict:
        epoch, batches = self._position() if self._position else (self.sampler.epoch, 0)
        return {"epoch": int(epoch), "batches": int(batches), "seed": int(self.sampler.seed)}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(self.sampler, ResumableSampler) or int(state.get("seed", -1)) != self.sampler.seed:
            return  # another data order (a changed --data.seed): start the epoch afresh
        per_epoch = len(self.batch_sampler)
        batches = int(state["batches"]) % per_epoch if per_epoch else 0
        epoch = int(state["epoch"]) + (int(state["batches"]) // per_epoch if per_epoch else 0)
        self.sampler.set_epoch(epoch)
        self.sampler.start_at(epoch, batches * self.batch_size)


class VideoDataModule(L.LightningDataModule):
    def __init__(self, data: str, clip_len: int = 16, stride: int = 1, batch_size: int = 8, num_workers: int = 2,
                 source: str = "auto", resolution: int | tuple[int, int] = 64, val_clips: int = 256, train_split: str = "train",
                 val_split: str = "val", seed: int = 0):
        """
        Args:
            data: dataset folder or video folder.
            clip_len: frames per clip.
            stride: frame stride within a clip.
            batch_size: clips per batch and per device.
            num_workers: DataLoader worker processes.
            source: auto | arrow | parquet | videos (auto: arrow when DIR holds a genie dataset card).
            resolution: frame size for `videos`: N (square) or [height, width]; frames are fitted as
                `genie data import --fit pad` does (letterboxed, nothing dropped).
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
        # explicit, so the share is disjoint with or without a Trainer, and the order depends only on (seed, epoch)
        sampler = ResumableSampler(ds, num_replicas=world, rank=rank, shuffle=train, seed=h.seed, drop_last=train)
        # the loader's own generator draws the workers' base seed, so iterating never touches the global RNG
        # (a resumed run iterates once more than an unbroken one, and must not shift masks or dropout)
        gen = torch.Generator().manual_seed(h.seed)
        if not train:
            return DataLoader(ds, sampler=sampler, generator=gen, **kw)
        return ResumableDataLoader(ds, sampler=sampler, generator=gen, position=self._train_position, **kw)

    def _train_position(self) -> tuple[int, int]:
        """(epoch, batches consumed in it) from the trainer's progress: where a resumed run must continue."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 0
        return trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_progress.current.ready

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            self.setup("fit")
        return self._loader(self.train_set, train=True)

    def val_dataloader(self):
        if self.val_set is None:
            return []
        return self._loader(self.val_set, train=False)
