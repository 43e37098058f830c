"""Clip datasets: random T-frame clips that never cross an episode boundary.

Every dataset yields dicts::

    video      float32 (t, c, H, W) in [-1, 1]   (token datasets: tokens int64 (t, h, w) instead)
    actions    int64 (t-1,)   only when the data has actions; actions[i] is taken between frames i and i+1
                              (with stride s > 1: the first of the s actions between clip frames i and i+1)
    episode_id int64, start int64   where the clip came from (frame index within its episode)

so a DataLoader batch is video (b,t,c,H,W) plus actions (b,t-1). Three sources:

- `ClipDataset`: a genie dataset folder (memory-mapped Arrow, zero-copy frame slices; map-style, so
  Lightning/DistributedSampler gives each rank a disjoint share).
- `StreamingClipDataset`: Parquet shards read with `datasets` streaming (iterable; shards or episodes
  are divided between ranks with no overlap).
- `VideoFolderClipDataset`: a folder of video files decoded on the fly with decord (map-style).
"""

from __future__ import annotations

import os
from pathlib import Path

import datasets
import numpy as np
import pyarrow.compute as pc
import torch
from datasets.distributed import split_dataset_by_node
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from data_pipelines.storage import Episode, iter_episodes, load_split, read_card
from data_pipelines.video import assign_splits, list_videos, resize_frames
from genie.core.errors import GenieInputError
from genie.core.frames import frames_to_video
from genie.core.optional import optional_import


def _span(clip_len: int, stride: int) -> int:
    return (clip_len - 1) * stride + 1


def _check_clip_args(clip_len: int, stride: int) -> None:
    if clip_len < 1:
        raise GenieInputError(f"clip_len must be >= 1, got {clip_len}")
    if stride < 1:
        raise GenieInputError(f"frame stride must be >= 1, got {stride}")


class _EpisodeIndex:
    """Valid clip starts of a set of episodes: clip i ↦ (episode, start frame)."""

    def __init__(self, lengths: np.ndarray, clip_len: int, stride: int, where: str):
        span = _span(clip_len, stride)
        self.lengths = lengths
        self.starts_per_ep = np.maximum(lengths - span + 1, 0)
        if self.starts_per_ep.sum() == 0:
            longest = int(lengths.max()) if len(lengths) else 0
            raise GenieInputError(
                f"{where}: no episode is long enough for clips of {clip_len} frames at stride {stride} "
                f"({span} frames needed; longest episode has {longest})")
        self.cum = np.cumsum(self.starts_per_ep)

    def __len__(self) -> int:
        return int(self.cum[-1])

    def locate(self, i: int) -> tuple[int, int]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        e = int(np.searchsorted(self.cum, i, side="right"))
        prev = int(self.cum[e - 1]) if e else 0
        return e, i - prev

    def fixed_subset(self, n: int, seed: int) -> np.ndarray:
        """n clip indices spread over episodes (for validation): deterministic in `seed`."""
        g = np.random.default_rng(seed)
        n = min(n, len(self))
        return np.sort(g.choice(len(self), size=n, replace=False))


def _check_rows(table, frame_bytes: int, has_actions: bool, where: str) -> None:
    """Rows that agree with themselves and the card, so a damaged shard is named instead of read out of bounds."""
    try:
        table.validate(full=True)  # offsets inside their buffers, valid UTF-8
        cols = ["episode_id", "offset", "num_frames", "frames"] + (["actions"] if has_actions else [])
        if any(table.column(c).null_count for c in cols):
            raise ValueError("null values")
        nfr = table.column("num_frames").to_numpy()
        if (nfr < 1).any():
            raise ValueError("a chunk with no frames")
        if (pc.binary_length(table.column("frames")).to_numpy(zero_copy_only=False) != nfr.astype(np.int64) * frame_bytes).any():
            raise ValueError("frame bytes do not match num_frames and the card's frame shape")
        if has_actions and (pc.list_value_length(table.column("actions")).to_numpy(zero_copy_only=False) != nfr).any():
            raise ValueError("actions do not match num_frames")
        eid, off = table.column("episode_id").to_numpy(), table.column("offset").to_numpy().astype(np.int64)
        order = np.lexsort((off, eid))
        eid, off, n = eid[order], off[order], nfr[order].astype(np.int64)
        first = np.r_[True, eid[1:] != eid[:-1]]
        expected = np.where(first, 0, np.r_[0, off[:-1] + n[:-1]])
        if (off != expected).any():
            raise ValueError("chunk offsets leave gaps or overlap within an episode")
    except Exception as e:  # pyarrow raises several types for damaged data
        raise GenieInputError(f"{where}: damaged Arrow shard ({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None


class ClipDataset(Dataset):
    """Random-access clips from one split of a genie dataset folder.

    Args:
        path: dataset folder (made by `genie data coinrun` / `genie data import`).
        split: train, val or test.
        clip_len: frames per clip (T).
        stride: take every `stride`-th frame.
        num_clips: if given, a fixed, seeded subset of this many clips (validation / evaluation);
            otherwise every valid start is one item (shuffle with the DataLoader).
    """

    def __init__(self, path: str | os.PathLike, split: str = "train", clip_len: int = 16, stride: int = 1,
                 num_clips: int | None = None, seed: int = 0):
        _check_clip_args(clip_len, stride)
        self.path, self.split, self.clip_len, self.stride = str(path), split, clip_len, stride
        self.card = read_card(path)
        self.has_actions = bool(self.card.get("has_actions"))
        self.frame_shape = (self.card["height"], self.card["width"], self.card["channels"])
        self.dtype = np.dtype(self.card.get("dtype", "uint8"))
        self.is_tokens = self.dtype == np.uint16
        self._open()
        self.index = _EpisodeIndex(self._lengths, clip_len, stride, f"{path}/{split}")
        self.subset = None if num_clips is None else self.index.fixed_subset(num_clips, seed)

    # Arrow buffers are memory-mapped views: rebuilt after unpickling in a worker instead of being copied.
    def _open(self) -> None:
        ds = load_split(self.path, self.split)
        if ds is None:
            raise GenieInputError(f"{self.path}: split {self.split!r} is empty (splits: "
                                  f"{', '.join(self.card.get('splits', {})) or 'none'})")
        table = ds.data.table
        self._ds = ds  # keeps the memory map alive
        frame_bytes = int(np.prod(self.frame_shape)) * self.dtype.itemsize
        _check_rows(table, frame_bytes, self.has_actions, f"{self.path}/{self.split}")
        col = table.column("frames")
        bufs, row_buf, row_byte = [], [], []
        for chunk in col.chunks:
            offsets = np.frombuffer(chunk.buffers()[1], dtype=np.int32)[chunk.offset:chunk.offset + len(chunk) + 1]
            data = np.frombuffer(chunk.buffers()[2], dtype=np.uint8)
            bufs.append(data)
            row_buf.append(np.full(len(chunk), len(bufs) - 1))
            row_byte.append(offsets[:-1].astype(np.int64))
        row_buf, row_byte = np.concatenate(row_buf), np.concatenate(row_byte)
        nfr = table.column("num_frames").to_numpy()
        acts = table.column("actions").combine_chunks().values.to_numpy(zero_copy_only=False) if self.has_actions else None
        act_row_off = np.concatenate([[0], np.cumsum(nfr)]) if self.has_actions else None

        lengths, fb, fbyte, factions, eids, ep_rows = [], [], [], [], [], []
        for eid, rows in iter_episodes(ds):
            n = int(nfr[rows].sum())
            lengths.append(n)
            eids.append(eid)
            ep_rows.append(rows)
            for r in rows:
                k = int(nfr[r])
                fb.append(np.full(k, row_buf[r]))
                fbyte.append(row_byte[r] + np.arange(k, dtype=np.int64) * frame_bytes)
                if acts is not None:
                    factions.append(acts[act_row_off[r]:act_row_off[r] + k])
        self._bufs = bufs
        self._frame_buf = np.concatenate(fb).astype(np.int32)
        self._frame_byte = np.concatenate(fbyte)
        self._frame_bytes = frame_bytes
        self._actions = np.concatenate(factions).astype(np.int64) if acts is not None else None
        self._lengths = np.asarray(lengths, dtype=np.int64)
        self._ep_start = np.concatenate([[0], np.cumsum(self._lengths)[:-1]])
        self._eids = np.asarray(eids, dtype=np.int64)
        self._rows = ep_rows  # each episode's table rows, in frame order

    def __getstate__(self):
        state = self.__dict__.copy()
        for k in ("_ds", "_bufs", "_frame_buf", "_frame_byte", "_actions"):
            state.pop(k, None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._open()

    def __len__(self) -> int:
        return len(self.subset) if self.subset is not None else len(self.index)

    @property
    def num_episodes(self) -> int:
        return len(self._lengths)

    def clip_frames(self, episode: int, start: int) -> np.ndarray:
        """uint8 (t,H,W,c) frames of the clip of episode index `episode` starting at frame `start`."""
        g = self._ep_start[episode] + start + np.arange(self.clip_len) * self.stride
        fb, bufs, fbytes = self._frame_bytes, self._bufs, self._frame_byte
        frames = np.stack([bufs[b][o:o + fb] for b, o in zip(self._frame_buf[g], fbytes[g])])
        return frames.view(self.dtype).reshape(self.clip_len, *self.frame_shape)

    def episode_frames(self, episode: int) -> np.ndarray:
        g = self._ep_start[episode] + np.arange(self._lengths[episode])
        fb = self._frame_bytes
        frames = np.stack([self._bufs[b][o:o + fb] for b, o in zip(self._frame_buf[g], self._frame_byte[g])])
        return frames.view(self.dtype).reshape(len(g), *self.frame_shape)

    def episode_id(self, episode: int) -> int:
        """The stored `episode_id` of episode index `episode`."""
        return int(self._eids[episode])

    def episode_actions(self, episode: int) -> np.ndarray | None:
        if self._actions is None:
            return None
        s = self._ep_start[episode]
        return self._actions[s:s + self._lengths[episode]]

    def episode(self, episode: int) -> Episode:
        """Episode index `episode` whole, as stored: frames, actions, rewards, dones, level seed and source."""
        table, rows = self._ds.data.table, self._rows[episode]

        def column(name: str) -> np.ndarray:
            return np.concatenate([np.asarray(table.column(name)[r].as_py()) for r in rows])

        return Episode(frames=self.episode_frames(episode), actions=self.episode_actions(episode),
                       rewards=column("rewards"), dones=column("dones"),
                       level_seed=table.column("level_seed")[rows[0]].as_py(), source=table.column("source")[rows[0]].as_py())

    def item(self, episode: int, start: int) -> dict:
        frames = self.clip_frames(episode, start)
        out = {"tokens": torch.from_numpy(frames[..., 0].astype(np.int64))} if self.is_tokens else \
            {"video": frames_to_video(frames)}
        out.update(episode_id=int(self._eids[episode]), start=int(start))
        if self._actions is not None:
            g = self._ep_start[episode] + start + np.arange(self.clip_len - 1) * self.stride
            out["actions"] = torch.from_numpy(self._actions[g])
        return out

    def __getitem__(self, i: int) -> dict:
        if self.subset is not None:
            i = int(self.subset[i])
        return self.item(*self.index.locate(int(i)))


class VideoFolderClipDataset(Dataset):
    """Clips decoded on the fly from a folder of video files (one file = one episode), via decord.

    Files are assigned to splits by the same path hash as `genie data import`, so a folder read
    directly and the same folder imported have identical splits.
    """

    def __init__(self, folder: str | os.PathLike, split: str = "train", clip_len: int = 16, stride: int = 1,
                 resolution: int | tuple[int, int] = 64, val_fraction: float = 0.05, test_fraction: float = 0.05,
                 num_clips: int | None = None, seed: int = 0, fit: str = "pad"):
        _check_clip_args(clip_len, stride)
        self.folder, self.split, self.clip_len, self.stride, self.resolution = Path(folder), split, clip_len, stride, resolution
        self.fit = fit
        files, _ = list_videos(folder)
        decord = optional_import("decord", "reading clips straight from video files")

        readable = {}
        for f in files:  # splits are assigned among the readable files, as `genie data import` does
            try:
                n = len(decord.VideoReader(str(f), num_threads=1))
            except Exception as e:
                print(f"genie: skipping {f}: {str(e).strip()[:120] or type(e).__name__}")
                continue
            if n > 0:
                readable[f] = n
        splits = assign_splits([f.relative_to(self.folder).as_posix() for f in readable], val_fraction, test_fraction)
        self.files = [f for f in readable if splits[f.relative_to(self.folder).as_posix()] == split]
        lengths = [readable[f] for f in self.files]
        if not self.files:
            raise GenieInputError(f"{folder}: no readable video file falls in split {split!r} ({len(files)} files in all)")
        self.has_actions = False
        self.index = _EpisodeIndex(np.asarray(lengths), clip_len, stride, str(folder))
        self.subset = None if num_clips is None else self.index.fixed_subset(num_clips, seed)
        self._readers: dict[int, object] = {}

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_readers"] = {}
        return state

    def _reader(self, e: int):
        decord = optional_import("decord", "reading clips straight from video files")
        r = self._readers.get(e)
        if r is None:
            if len(self._readers) >= 16:
                self._readers.pop(next(iter(self._readers)))
            r = self._readers[e] = decord.VideoReader(str(self.files[e]), num_threads=1)
        return r

    def __len__(self) -> int:
        return len(self.subset) if self.subset is not None else len(self.index)

    def __getitem__(self, i: int) -> dict:
        if self.subset is not None:
            i = int(self.subset[i])
        e, s = self.index.locate(int(i))
        idx = (s + np.arange(self.clip_len) * self.stride).tolist()
        frames = resize_frames(self._reader(e).get_batch(idx).asnumpy(), self.resolution, self.fit)
        return {"video": frames_to_video(frames), "episode_id": e, "start": s}


class StreamingClipDataset(IterableDataset):
    """Clips from Parquet shards streamed with `datasets` (no full download, no Arrow cache).

    Rows of one episode are consecutive within a shard (`write_parquet` cuts shards at episode
    boundaries); each complete episode yields about one clip per `clip_len` frames at seeded random
    starts. Across ranks: whole shards when their count divides the world size, otherwise whole
    episodes by id — never the same episode on two ranks.
    """

    def __init__(self, files: list[str] | str, clip_len: int = 16, stride: int = 1, seed: int = 0,
                 rank: int | None = None, world_size: int | None = None):
        _check_clip_args(clip_len, stride)
        if isinstance(files, (str, os.PathLike)):
            p = Path(files)
            files = sorted(str(f) for f in p.glob("*.parquet")) if p.is_dir() else [str(files)]
        if not files:
            raise GenieInputError("no Parquet shards to stream (make them with `genie data … --parquet`)")
        self.files, self.clip_len, self.stride, self.seed = list(files), clip_len, stride, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    @classmethod
    def from_dataset_dir(cls, path: str | os.PathLike, split: str = "train", **kw) -> StreamingClipDataset:
        read_card(path)
        files = sorted(str(f) for f in (Path(path) / "parquet").glob(f"{split}-*.parquet"))
        if not files:
            raise GenieInputError(f"{path}: no Parquet shards for split {split!r} (record or import with --parquet)")
        return cls(files, **kw)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _rank_world(self) -> tuple[int, int]:
        if self.rank is not None and self.world_size is not None:
            return self.rank, self.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def __iter__(self):
        rank, world = self._rank_world()
        ds = datasets.load_dataset("parquet", data_files=self.files, split="train", streaming=True)
        episode_filter = None
        if world > 1:
            if ds.num_shards % world == 0:
                ds = split_dataset_by_node(ds, rank=rank, world_size=world)
            else:
                episode_filter = (rank, world)
        wi = get_worker_info()
        worker = wi.id if wi is not None else 0
        rng = np.random.default_rng([self.seed, self.epoch, rank, worker])
        span = _span(self.clip_len, self.stride)

        def clips_of(rows):
            frames = np.concatenate([np.frombuffer(r["frames"], np.uint8).reshape(r["num_frames"], r["height"], r["width"], r["channels"]) for r in rows])
            acts = np.concatenate([np.asarray(r["actions"], np.int64) for r in rows])
            n = len(frames)
            if n < span:
                return
            has_actions = bool((acts >= 0).any())
            for _ in range(max(1, (n - span + 1) // self.clip_len)):
                s = int(rng.integers(0, n - span + 1))
                g = s + np.arange(self.clip_len) * self.stride
                out = {"video": frames_to_video(frames[g]), "episode_id": int(rows[0]["episode_id"]), "start": s}
                if has_actions:
                    out["actions"] = torch.from_numpy(acts[g[:-1]])
                yield out

        buf: list[dict] = []
        for row in ds:
            if episode_filter is not None and row["episode_id"] % episode_filter[1] != episode_filter[0]:
                continue
            if buf and row["episode_id"] != buf[-1]["episode_id"]:
                yield from clips_of(sorted(buf, key=lambda r: r["offset"]))
                buf = []
            buf.append(row)
        if buf:
            yield from clips_of(sorted(buf, key=lambda r: r["offset"]))
