"""A non-CoinRun corpus of "a user's own videos": a dozen mp4 files of four Atari games played by a uniform
random policy (ALE, whose ROMs ship with the `ale-py` wheel), to try `genie quickstart --videos` as a new user
would (issue 23: code collapse on imported video).

Not a project dependency: run it from any environment with `ale-py` and `av` (PyAV), e.g.
    python3 -m venv /tmp/ale && /tmp/ale/bin/pip install ale-py "numpy<2" av
    /tmp/ale/bin/python benchmarks/atari_corpus.py --out data/atari-videos
Deterministic in --seed. Frames are the native 160×210 RGB screens at 30 fps (frameskip 2 of ALE's 60 Hz).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import av
import numpy as np
from ale_py import ALEInterface, roms

GAMES = ("breakout", "pong", "space_invaders", "ms_pacman")


def record(game: str, seed: int, frames: int, path: Path) -> int:
    ale = ALEInterface()
    ale.setInt("random_seed", seed)
    ale.setFloat("repeat_action_probability", 0.0)
    ale.loadROM(roms.get_rom_path(game))
    actions = ale.getMinimalActionSet()
    rng = np.random.default_rng(seed)
    n = 0
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.height, stream.width = 210, 160
        stream.pix_fmt = "yuv420p"
        while n < frames:
            if ale.game_over():
                ale.reset_game()
            a = actions[rng.integers(len(actions))]
            ale.act(a)
            ale.act(a)  # frameskip 2
            for packet in stream.encode(av.VideoFrame.from_ndarray(ale.getScreenRGB(), format="rgb24")):
                out.mux(packet)
            n += 1
        for packet in stream.encode():
            out.mux(packet)
    return n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--per-game", type=int, default=3)
    ap.add_argument("--frames", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for g in GAMES:
        for i in range(a.per_game):
            path = out / f"{g}-{i}.mp4"
            n = record(g, a.seed * 1000 + i, a.frames, path)
            print(f"{path}: {n} frames")


if __name__ == "__main__":
    main()
