"""The DataModule: batch layout, and two processes (gloo) reading disjoint shares of the clips."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from data_pipelines.datamodule import VideoDataModule


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, path: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    dm = VideoDataModule(path, clip_len=4, batch_size=3, num_workers=0, seed=1)
    dm.setup("fit")
    seen = []
    for batch in dm.train_dataloader():
        seen += list(zip(batch["episode_id"].tolist(), batch["start"].tolist()))
    torch.save(seen, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_two_process_shares_are_disjoint(coded_dataset, tmp_path):
    path, lengths = coded_dataset
    mp.spawn(_worker, args=(2, _free_port(), str(path), str(tmp_path)), nprocs=2, join=True)
    a = torch.load(tmp_path / "rank0.pt")
    b = torch.load(tmp_path / "rank1.pt")
    assert a and b and len(a) == len(b)
    assert not set(a) & set(b), "the two ranks read the same clip"
    total = sum(max(n - 3, 0) for n in lengths)
    assert len(set(a) | set(b)) >= total - 2 * 3  # all but a dropped remainder


def test_batches_have_the_documented_layout(coded_dataset):
    path, _ = coded_dataset
    dm = VideoDataModule(str(path), clip_len=4, batch_size=5, num_workers=0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["video"].shape == (5, 4, 3, 16, 16) and batch["video"].dtype == torch.float32
    assert batch["video"].min() >= -1 and batch["video"].max() <= 1
    assert batch["actions"].shape == (5, 3) and batch["actions"].dtype == torch.int64
    val = next(iter(dm.val_dataloader()))
    assert val["video"].shape[1:] == (4, 3, 16, 16)
    # the same seed gives the same shuffled order
    dm2 = VideoDataModule(str(path), clip_len=4, batch_size=5, num_workers=0)
    dm2.setup("fit")
    assert torch.equal(next(iter(dm2.train_dataloader()))["video"], batch["video"])
