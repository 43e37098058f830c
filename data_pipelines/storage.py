"""On-disk dataset format: Hugging Face `datasets` Arrow shards, one row per fixed-length chunk of an episode.

Layout of a dataset folder::

    DIR/
      genie_dataset.json          # the card: format version, how it was made, resolution, splits, counts
      train/data-00000.arrow      # Arrow IPC stream shards, opened with datasets.Dataset.from_file (memory-mapped)
      val/…  test/…               # a split may be absent when it has no episode
      parquet/train-00000.parquet # optional (--parquet): the same rows as Parquet shards, for streaming

Row schema (one per chunk of at most `chunk_len` consecutive frames of one episode):

    episode_id  int64    unique within the dataset
    offset      int32    index of the chunk's first frame within its episode
    num_frames  int32    frames in this chunk (n)
    height, width, channels  int32
    frames      binary   raw uint8 bytes, layout (n, H, W, c), RGB (token datasets: uint16 ids, (n, h, w, 1))
    actions     list<int16>  length n: actions[j] is the action taken at frame offset+j, i.e. *between*
                         frame offset+j and offset+j+1 (architecture §4). The episode's last frame carries the
                         action that ended the episode (it has no next frame in the episode). -1 = unknown.
    rewards     list<float32> length n: reward received for actions[j]
    dones       list<bool>   length n: True only on the last frame of an episode the environment ended
    level_seed  int64    CoinRun level seed (-1 for imported videos)
    source      string   the video file an imported episode came from ("" for CoinRun)

Datasets are written to a temporary sibling folder and renamed into place at the end, so a run killed
midway never leaves a folder that looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from genie.core.atomic import disk_full_error, is_disk_full, replace_dir, temp_dir_beside
from genie.core.errors import GenieInputError

FORMAT_NAME = "genie-video-dataset"
TOKEN_FORMAT_NAME = "genie-token-dataset"  # same layout; `frames` holds uint16 token ids (n, h, w, 1)
FORMAT_VERSION = 1
CARD_NAME = "genie_dataset.json"
SPLITS = ("train", "val", "test")
DEFAULT_CHUNK_LEN = 64
_SHARD_BYTES = 256 * 2**20  # rotate Arrow shards at about this size

SCHEMA = pa.schema(
    [
        ("episode_id", pa.int64()),
        ("offset", pa.int32()),
        ("num_frames", pa.int32()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("channels", pa.int32()),
        ("frames", pa.binary()),
        ("actions", pa.list_(pa.int16())),
        ("rewards", pa.list_(pa.float32())),
        ("dones", pa.list_(pa.bool_())),
        ("level_seed", pa.int64()),
        ("source", pa.string()),
    ]
)


@dataclass
class Episode:
    """One whole episode in memory. frames (n,H,W,c) uint8; actions/rewards/dones length n (see module doc)."""

    frames: np.ndarray
    actions: np.ndarray | None = None
    rewards: np.ndarray | None = None
    dones: np.ndarray | None = None
    level_seed: int = -1
    source: str = ""

    def __len__(self) -> int:
        return int(self.frames.shape[0])


def _check_fresh_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise GenieInputError(f"{out}: --out exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise GenieInputError(f"{out}: --out exists and is not empty (pass --overwrite to replace it)")


class DatasetWriter:
    """Streams episodes into split shards under a temporary folder; `close()` writes the card and renames.

    Use as a context manager: an exception (or a kill) leaves only the temporary folder, never `out`.
    """

    def __init__(self, out: str | os.PathLike, *, overwrite: bool = False, chunk_len: int = DEFAULT_CHUNK_LEN,
                 card: dict[str, Any] | None = None, parquet: bool = False):
        self.out = Path(out)
        _check_fresh_out(self.out, overwrite)
        if chunk_len < 1:
            raise GenieInputError(f"chunk_len must be >= 1, got {chunk_len}")
        self.overwrite = overwrite
        self.parquet = parquet
        self.chunk_len = chunk_len
        self.card = dict(card or {})
        self.tmp = temp_dir_beside(self.out)
        self._writers: dict[str, tuple[pa.ipc.RecordBatchStreamWriter, Any, int]] = {}
        self._shard_index = {s: 0 for s in SPLITS}
        self._next_episode_id = 0
        self.stats = {s: {"episodes": 0, "frames": 0, "level_seeds": set(), "sources": 0} for s in SPLITS}
        self.shape: tuple[int, int, int] | None = None
        self.dtype: str | None = None
        self.has_actions: bool | None = None
        self._closed = False

    # -- writing -------------------------------------------------------------------------------------
    def _writer(self, split: str):
        w = self._writers.get(split)
        if w is not None and w[2] < _SHARD_BYTES:
            return w
        if w is not None:
            w[0].close()
            w[1].close()
            self._shard_index[split] += 1
        d = self.tmp / split
        d.mkdir(exist_ok=True)
        sink = pa.OSFile(str(d / f"data-{self._shard_index[split]:05d}.arrow"), "wb")
        writer = pa.ipc.new_stream(sink, SCHEMA)
        self._writers[split] = (writer, sink, 0)
        return self._writers[split]

    def add_episode(self, ep: Episode, split: str) -> int:
        """Append one episode to `split`; returns its episode id."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        n = len(ep)
        if n == 0:
            raise ValueError("cannot store an empty episode")
        if ep.frames.dtype not in (np.uint8, np.uint16) or ep.frames.ndim != 4:
            raise ValueError(f"frames must be uint8 (n,H,W,c) or uint16 tokens (n,h,w,1), got {ep.frames.dtype} {ep.frames.shape}")
        if self.dtype is None:
            self.dtype = ep.frames.dtype.name
        elif ep.frames.dtype.name != self.dtype:
            raise ValueError(f"all episodes must share one dtype: {ep.frames.dtype} != {self.dtype}")
        shape = tuple(int(s) for s in ep.frames.shape[1:])
        if self.shape is None:
            self.shape = shape
        elif shape != self.shape:
            raise ValueError(f"all episodes must share one frame shape: {shape} != {self.shape}")
        has_actions = ep.actions is not None
        if self.has_actions is None:
            self.has_actions = has_actions
        elif has_actions != self.has_actions:
            raise ValueError("either every episode has actions or none does")
        actions = (np.asarray(ep.actions, dtype=np.int16) if has_actions else np.full(n, -1, np.int16))
        rewards = np.zeros(n, np.float32) if ep.rewards is None else np.asarray(ep.rewards, np.float32)
        dones = np.zeros(n, bool) if ep.dones is None else np.asarray(ep.dones, bool)
        for name, arr in (("actions", actions), ("rewards", rewards), ("dones", dones)):
            if arr.shape != (n,):
                raise ValueError(f"{name} must have length {n} (one per frame), got {arr.shape}")

        eid = self._next_episode_id
        self._next_episode_id += 1
        frames = np.ascontiguousarray(ep.frames)
        rows: dict[str, list] = {k: [] for k in SCHEMA.names}
        for off in range(0, n, self.chunk_len):
            m = min(self.chunk_len, n - off)
            rows["episode_id"].append(eid)
            rows["offset"].append(off)
            rows["num_frames"].append(m)
            rows["height"].append(shape[0])
            rows["width"].append(shape[1])
            rows["channels"].append(shape[2])
            rows["frames"].append(frames[off:off + m].tobytes())
            rows["actions"].append(actions[off:off + m])
            rows["rewards"].append(rewards[off:off + m])
            rows["dones"].append(dones[off:off + m])
            rows["level_seed"].append(int(ep.level_seed))
            rows["source"].append(ep.source)
        batch = pa.RecordBatch.from_pydict(rows, schema=SCHEMA)
        writer, sink, size = self._writer(split)
        writer.write_batch(batch)
        self._writers[split] = (writer, sink, size + batch.nbytes)

        st = self.stats[split]
        st["episodes"] += 1
        st["frames"] += n
        if ep.level_seed >= 0:
            st["level_seeds"].add(int(ep.level_seed))
        if ep.source:
            st["sources"] += 1
        return eid

    # -- finishing -----------------------------------------------------------------------------------
    def close(self) -> Path:
        """Write the card and move the finished dataset into place; returns its path."""
        if self._closed:
            return self.out
        for writer, sink, _ in self._writers.values():
            writer.close()
            sink.close()
        total = sum(s["frames"] for s in self.stats.values())
        if total == 0:
            self.abort()
            raise GenieInputError(f"{self.out}: nothing to write (no episode was recorded or imported)")
        seeds = {s: sorted(self.stats[s]["level_seeds"]) for s in SPLITS}
        for a in SPLITS:  # the split key must never straddle splits
            for b in SPLITS:
                if a < b and set(seeds[a]) & set(seeds[b]):
                    raise AssertionError(f"level seeds shared by {a} and {b}")
        card = {
            "format": FORMAT_NAME if self.dtype == "uint8" else TOKEN_FORMAT_NAME,
            "dtype": self.dtype,
            "format_version": FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "chunk_len": self.chunk_len,
            "height": self.shape[0],
            "width": self.shape[1],
            "channels": self.shape[2],
            "has_actions": bool(self.has_actions),
            **self.card,
            "splits": {
                s: {
                    "episodes": self.stats[s]["episodes"],
                    "frames": self.stats[s]["frames"],
                    "num_level_seeds": len(seeds[s]),
                    "level_seeds": seeds[s] if len(seeds[s]) <= 10000 else None,
                }
                for s in SPLITS
                if self.stats[s]["episodes"]
            },
        }
        if not card["has_actions"]:
            card["num_actions"] = 0
        (self.tmp / CARD_NAME).write_text(json.dumps(card, indent=2))
        if self.parquet:
            write_parquet(self.tmp)
        if self.out.exists():
            if not self.overwrite and any(self.out.iterdir()):
                self.abort()
                raise GenieInputError(f"{self.out}: appeared while writing and is not empty; nothing written")
        replace_dir(self.tmp, self.out)  # the previous dataset (with --overwrite) stays whole until the swap
        self._closed = True
        return self.out

    def abort(self) -> None:
        for writer, sink, _ in self._writers.values():
            try:
                writer.close()
                sink.close()
            except Exception:
                pass
        self._writers.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)
        self._closed = True

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
            if is_disk_full(exc):  # one clear line instead of pyarrow's error; nothing is left at `out`
                raise disk_full_error(self.out) from None


# -- reading ---------------------------------------------------------------------------------------------

def read_card(path: str | os.PathLike) -> dict[str, Any]:
    """The dataset card of `path`, or a GenieInputError naming why `path` is not one of our datasets."""
    p = Path(path)
    if not p.exists():
        raise GenieInputError(f"{p}: no such dataset folder")
    if not p.is_dir():
        raise GenieInputError(f"{p}: not a folder (expected a genie dataset folder)")
    card_path = p / CARD_NAME
    if not card_path.is_file():
        raise GenieInputError(f"{p}: not a genie dataset (no {CARD_NAME}; make one with `genie data coinrun` or `genie data import`)")
    try:
        card = json.loads(card_path.read_text())
    except (OSError, ValueError) as e:
        raise GenieInputError(f"{card_path}: unreadable dataset card ({e})") from None
    if not isinstance(card, dict) or card.get("format") not in (FORMAT_NAME, TOKEN_FORMAT_NAME):
        raise GenieInputError(f"{card_path}: not a genie dataset card (format={card.get('format') if isinstance(card, dict) else None!r})")
    _check_card_fields(card, card_path)
    if card.get("format_version", 0) > FORMAT_VERSION:
        raise GenieInputError(f"{card_path}: format version {card.get('format_version')} is newer than this genie understands ({FORMAT_VERSION})")
    return card


def _check_card_fields(card: dict, card_path: Path) -> None:
    """The fields readers rely on, with their types: a damaged card is named here, not by a KeyError later."""
    def is_int(v, low=0):
        return isinstance(v, int) and not isinstance(v, bool) and v >= low

    bad = [k for k, low in (("height", 1), ("width", 1), ("channels", 1)) if not is_int(card.get(k), low)]
    bad += [k for k in ("format_version", "num_actions") if k in card and not is_int(card[k])]
    bad += [k for k in ("has_actions",) if not isinstance(card.get(k), bool)]
    splits = card.get("splits", {})
    if not isinstance(splits, dict) or not all(
            isinstance(s, str) and isinstance(v, dict) and is_int(v.get("episodes")) and is_int(v.get("frames"))
            for s, v in splits.items()):
        bad.append("splits")
    if bad:
        raise GenieInputError(f"{card_path}: damaged dataset card (missing or invalid: {', '.join(bad)})")


def pick_split(path: str | os.PathLike, split: str | None = None) -> tuple[str, str | None]:
    """(split to read, a note for stderr or None). `split` given: it, unchanged. None: the first of
    test, val, train that holds episodes, with a note saying which was chosen and why (a small
    imported folder may have no test split)."""
    if split is not None:
        return split, None
    card = read_card(path)
    have = [s for s in ("test", "val", "train") if (card.get("splits", {}).get(s) or {}).get("episodes")]
    if not have:
        raise GenieInputError(f"{path}: the dataset has no episodes")
    if have[0] == "test":
        return "test", f"genie: note: --split not given; using the test split of {path}"
    if have[0] == "val":
        return "val", f"genie: note: --split not given; {path} has no test split, using val"
    return "train", (f"genie: note: --split not given; {path} has no test or val split, using train "
                     "(figures on training data are optimistic)")


def split_files(path: str | os.PathLike, split: str) -> list[Path]:
    d = Path(path) / split
    return sorted(d.glob("data-*.arrow")) if d.is_dir() else []


def load_split(path: str | os.PathLike, split: str):
    """The rows of one split as a memory-mapped `datasets.Dataset` (None when the split is empty)."""
    card = read_card(path)
    if split not in SPLITS:
        raise GenieInputError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    files = split_files(path, split)
    if not files:
        if split in card.get("splits", {}):
            raise GenieInputError(f"{path}: split {split!r} is listed in the card but its shards are missing")
        return None
    try:
        parts = [datasets.Dataset.from_file(str(f)) for f in files]
    except Exception as e:  # pyarrow raises several types for truncated/corrupt shards
        raise GenieInputError(f"{path}/{split}: corrupt Arrow shard ({type(e).__name__}: {e})") from None
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


# ~512 frames of 64x64 video per shard: a few MB, so a streaming reader fetches in small steps and several ranks
# each get whole shards of a dataset of a few dozen episodes
PARQUET_ROWS_PER_SHARD = 512


def write_parquet(path: str | os.PathLike) -> list[Path]:
    """Export every split as Parquet shards under DIR/parquet/ (for streaming, e.g. from a hub or a bucket).

    Each shard holds at least `PARQUET_ROWS_PER_SHARD` rows and is cut only where an episode ends.
    """
    card = read_card(path)
    out = Path(path) / "parquet"
    out.mkdir(exist_ok=True)
    written = []
    for split in card.get("splits", {}):
        ds = load_split(path, split)
        table = ds.data.table
        eids = table.column("episode_id").to_numpy()
        # cut only where the episode changes, so a streamed shard always holds whole episodes
        boundaries = np.flatnonzero(np.diff(eids)) + 1
        start, i = 0, 0
        while start < len(table):
            later = boundaries[boundaries >= start + PARQUET_ROWS_PER_SHARD]
            stop = int(later[0]) if len(later) else len(table)
            f = out / f"{split}-{i:05d}.parquet"
            pq.write_table(table.slice(start, stop - start), f)
            written.append(f)
            start, i = stop, i + 1
    return written


def dir_size(path: str | os.PathLike) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def info(path: str | os.PathLike) -> dict[str, Any]:
    """Summary for `genie data info`: counts per split, resolution, actions, size on disk."""
    card = read_card(path)
    splits = {}
    for s, st in card.get("splits", {}).items():
        splits[s] = {"episodes": st["episodes"], "frames": st["frames"], "num_level_seeds": st.get("num_level_seeds", 0)}
    frames = sum(s["frames"] for s in splits.values())
    size = dir_size(path)
    return {
        "path": str(Path(path)),
        "source": card.get("source", "unknown"),
        "episodes": sum(s["episodes"] for s in splits.values()),
        "frames": frames,
        "resolution": [card["height"], card["width"]],
        "channels": card["channels"],
        "has_actions": card["has_actions"],
        "num_actions": card.get("num_actions", 0),
        "splits": splits,
        "size_bytes": size,
        "bytes_per_million_frames": (size / frames * 1e6) if frames else None,
        "parquet_shards": len(list((Path(path) / "parquet").glob("*.parquet"))),
    }


def iter_episodes(ds) -> Iterator[tuple[int, list[int]]]:
    """(episode_id, [row indices in frame order]) for every episode of a loaded split."""
    eids = np.asarray(ds.data.table.column("episode_id").to_numpy())
    offs = np.asarray(ds.data.table.column("offset").to_numpy())
    order = np.lexsort((offs, eids))
    if len(order) == 0:
        return
    bounds = np.flatnonzero(np.diff(eids[order])) + 1
    for group in np.split(order, bounds):
        yield int(eids[group[0]]), group.tolist()
