"""`genie data coinrun|import|info`: record, import and inspect video datasets (parsers and their commands).

Each command imports what it runs when it runs, as genie.cli does, so `genie data info` does not load torch.
"""

from __future__ import annotations

import argparse
import json

from data_pipelines.storage import SPLITS


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"


def _cmd_coinrun(a: argparse.Namespace) -> None:
    from data_pipelines.coinrun import record_coinrun

    s = record_coinrun(a.out, a.episodes, start_level=a.start_level, num_levels=a.num_levels, seed=a.seed,
                       max_steps=a.max_steps, num_envs=a.num_envs, split=a.split, val_fraction=a.val_fraction,
                       test_fraction=a.test_fraction, overwrite=a.overwrite, chunk_len=a.chunk_len,
                       parquet=a.parquet, action_repeat=a.action_repeat, policy=a.policy,
                       successes_only=a.successes_only, progress=not a.quiet)
    splits = ", ".join(f"{k} {v}" for k, v in s["splits"].items())
    print(f"recorded {s['episodes']} episodes, {s['frames']} frames in {s['seconds']:.1f} s "
          f"({s['frames_per_s']:.0f} frames/s) → {s['path']} [{splits}]; coin reached in {s['successes']} of "
          f"{s['played']} played")


def _cmd_import(a: argparse.Namespace) -> None:
    from data_pipelines.importing import import_videos

    s = import_videos(a.videos, a.out, resolution=a.resolution, fit=a.fit, val_fraction=a.val_fraction,
                      test_fraction=a.test_fraction, overwrite=a.overwrite, chunk_len=a.chunk_len,
                      parquet=a.parquet, progress=not a.quiet, decode_timeout=a.decode_timeout)
    splits = ", ".join(f"{k} {v}" for k, v in s["splits"].items())
    print(f"imported {s['imported']} videos, {s['frames']} frames in {s['seconds']:.1f} s → {s['path']} [{splits}]; "
          f"skipped {len(s['skipped'])} unreadable"
          + (f" ({', '.join(r for r, _ in s['skipped'])})" if s["skipped"] else "")
          + f"; ignored {len(s['ignored_non_video'])} non-video files")
    t = s["fit"]["target"]
    srcs = ", ".join(f"{p['source'][1]}×{p['source'][0]} ({p['files']})" for p in s["fit"]["sources"])
    print(f"frames fitted to {t['width']}×{t['height']} (width×height) by --fit {s['fit']['mode']} from {srcs}")


def _cmd_info(a: argparse.Namespace) -> None:
    from data_pipelines.storage import info

    d = info(a.dir)
    if a.json:
        print(json.dumps(d, indent=2))
        return
    print(f"{d['path']}  ({d['source']})")
    print(f"  episodes {d['episodes']}, frames {d['frames']}, resolution {d['resolution'][0]}×{d['resolution'][1]}×{d['channels']}")
    print("  actions: " + (f"yes, {d['num_actions']} ids" if d["has_actions"] else "none (unlabeled video)"))
    for s, st in d["splits"].items():
        extra = f", {st['num_level_seeds']} levels" if st["num_level_seeds"] else ""
        print(f"  {s:5s}: {st['episodes']} episodes, {st['frames']} frames{extra}")
    per = d["bytes_per_million_frames"]
    print(f"  size on disk {_human_bytes(d['size_bytes'])}" + (f" ({_human_bytes(per)} per million frames)" if per else "")
          + (f", {d['parquet_shards']} Parquet shards" if d["parquet_shards"] else ""))


def add_commands(sub, add_option) -> None:
    """Add `data coinrun|import|info` to the `genie` parser's subcommands (`add_option`: genie.cli's)."""
    data = sub.add_parser("data", help="record, import and inspect video datasets")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")

    def common_out(q):
        q.add_argument("--out", required=True, help="dataset folder to create")
        add_option(q, "--overwrite")
        q.add_argument("--val-fraction", type=float, default=0.05, help="share of levels/files held out for validation")
        q.add_argument("--test-fraction", type=float, default=0.05, help="share of levels/files held out for test")
        q.add_argument("--chunk-len", type=int, default=64, help="frames per stored row")
        q.add_argument("--parquet", action="store_true", help="also write Parquet shards (for streaming)")
        add_option(q, "--quiet")

    c = dsub.add_parser("coinrun", help="record Procgen CoinRun (hard, 64×64; random policy or a demonstrator)")
    c.add_argument("--episodes", type=int, required=True, help="episodes to record")
    c.add_argument("--start-level", type=int, default=0, help="first level seed")
    c.add_argument("--num-levels", type=int, default=0, help="number of levels (0 = unlimited)")
    add_option(c, "--seed", help="seeds the environments and the random policy")
    c.add_argument("--max-steps", type=int, default=1000, help="cut episodes to at most this many frames")
    c.add_argument("--num-envs", type=int, default=16, help="environments stepped in parallel")
    c.add_argument("--action-repeat", default="1", metavar="MEAN",  # checked by record_coinrun: one error line
                   help="random policy holds each action for a geometric number of steps with this mean "
                        "(keeps it with probability 1 - 1/MEAN per step); 1 = a fresh uniform action every step")
    c.add_argument("--policy", default="random", choices=["random", "search", "search-right"],
                   help="random (Genie App. F), or search: a demonstrator that looks ahead in the simulator "
                        "(Procgen state save/restore) and reaches the coin on nearly every level (Genie §3.3's "
                        "expert videos); search-right: the same with RIGHT, not RIGHT+UP, as its default move")
    c.add_argument("--successes-only", action="store_true",
                   help="keep only episodes that reached the coin, until --episodes are kept (filtered cloning)")
    add_option(c, "--split", default="auto", choices=["auto", *SPLITS],
                   help="auto: by level seed hash; or put every episode in one split (e.g. held-out levels)")
    common_out(c)
    c.set_defaults(func=_cmd_coinrun)

    i = dsub.add_parser("import", help="import a folder of mp4/webm/avi/mkv files (recursively)")
    i.add_argument("--videos", required=True, help="folder of video files")
    i.add_argument("--resolution", default="64", metavar="N|WxH",
                   help="frame size after import: N for N×N, or WIDTHxHEIGHT as video sizes are written "
                        "(64x48 = 64 wide, 48 high); default 64")
    i.add_argument("--fit", choices=["pad", "crop", "stretch"], default="pad",
                   help="how frames of another aspect reach that size: pad (default) letterboxes the whole frame "
                        "with black bars; crop cuts the centre and reports the rows/columns dropped; stretch "
                        "scales each axis on its own")
    i.add_argument("--decode-timeout", type=float, default=120.0, metavar="SECONDS",
                   help="skip (and name) a file whose decoding takes longer than this; 0 = no limit")
    common_out(i)
    i.set_defaults(func=_cmd_import)

    f = dsub.add_parser("info", help="episodes, frames, resolution, actions, splits, size on disk")
    f.add_argument("dir", help="dataset folder")
    f.add_argument("--json", action="store_true", help="print JSON")
    f.set_defaults(func=_cmd_info)
