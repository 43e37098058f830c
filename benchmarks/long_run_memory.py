"""Long runs stay healthy: memory (RSS) of a real `genie train` run sampled every minute, and its
data-loader worker processes counted, so growth after warm-up or leaked workers show.

    python benchmarks/long_run_memory.py [--minutes 20] [--interval 60] [--stage tokenizer] [--data data/coinrun]
                                         [--workers 2] [--name long_run_memory_cpu]

The run is the debug preset of the stage on CPU (fp32), validating every 100 steps, checkpointing every
50 (so validation loaders, checkpoints and epoch ends all recur many times). Sampled: the training
process's RSS and PSS and its children's (the workers') PSS. After the run is stopped (SIGTERM), the script checks that no
worker outlived it. Without --data, a small synthetic dataset is written to a temporary folder.
Writes benchmarks/results/NAME.json.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import psutil  # noqa: E402

from benchmarks.common import save  # noqa: E402

CONFIGS = {"tokenizer": "configs/tokenizer/debug.yaml", "lam": "configs/latent_actions/debug.yaml"}


def synthetic_dataset(out: Path) -> Path:
    from data_pipelines.storage import DatasetWriter, Episode

    rng = np.random.default_rng(0)
    with DatasetWriter(out, chunk_len=16) as w:
        for e in range(12):
            frames = rng.integers(0, 256, (48, 64, 64, 3), dtype=np.uint8)
            w.add_episode(Episode(frames=frames, actions=rng.integers(0, 15, 48).astype(np.int16)),
                          "val" if e == 11 else "train")
        w.close()
    return out


def tree_memory(p: psutil.Process) -> tuple[int, int, int, list[int]]:
    """(RSS of the process, its PSS, PSS of its children, child pids).

    Workers are forked: their RSS counts the pages they share with the parent (torch's libraries, the
    memory-mapped shards) once per worker, so the sum over processes uses PSS (shared pages split)."""
    kids = p.children(recursive=True)
    full = p.memory_full_info()
    kid_pss = 0
    for k in kids:
        try:
            kid_pss += k.memory_full_info().pss
        except psutil.NoSuchProcess:
            pass
    return full.rss, full.pss, kid_pss, [k.pid for k in kids]


def summary(samples: list[dict]) -> dict:
    """Memory after warm-up: from the first sample at which every loader (train and validation) has its
    workers, i.e. the worker count has reached its final value."""
    if not samples:
        return {}
    start = next(i for i, s in enumerate(samples) if s["workers"] == max(x["workers"] for x in samples))
    warm = samples[start:]
    total = [s["pss_mb"] + s["workers_pss_mb"] for s in warm]  # the whole run: trainer + workers
    rss = [s["rss_mb"] for s in warm]
    slope = float(np.polyfit([s["minute"] for s in warm], total, 1)[0]) if len(warm) >= 2 else None
    return {"warmup_ends_minute": warm[0]["minute"],
            "trainer_rss_mb_after_warmup": {"first": rss[0], "last": rss[-1], "min": min(rss), "max": max(rss)},
            "pss_total_mb_after_warmup": {"first": total[0], "last": total[-1], "min": min(total), "max": max(total)},
            "slope_pss_total_mb_per_minute_after_warmup": slope,
            "worker_counts": sorted({s["workers"] for s in samples})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--interval", type=float, default=60.0, help="seconds between samples")
    ap.add_argument("--stage", choices=sorted(CONFIGS), default="tokenizer")
    ap.add_argument("--data", default=None, help="dataset folder (default: a synthetic one)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--name", default="long_run_memory_cpu")
    a = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="genie-longrun-") as tmp:
        data = Path(a.data) if a.data else synthetic_dataset(Path(tmp) / "data")
        cmd = [sys.executable, "-m", "genie", "train", a.stage, "--config", CONFIGS[a.stage], "--data.data", str(data),
               "--trainer.default_root_dir", str(Path(tmp) / "run"), "--trainer.enable_progress_bar", "false",
               "--trainer.max_steps", "100000000", "--trainer.val_check_interval", "100", "--checkpoint_every", "50",
               "--trainer.log_every_n_steps", "50", "--data.num_workers", str(a.workers)]
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        log = open(Path(tmp) / "train.log", "w")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
        p = psutil.Process(proc.pid)
        t0, samples = time.monotonic(), []
        try:
            while time.monotonic() - t0 < a.minutes * 60 and proc.poll() is None:
                time.sleep(min(a.interval, max(0.0, a.minutes * 60 - (time.monotonic() - t0))))
                if proc.poll() is not None:
                    break
                rss, pss, kids, pids = tree_memory(p)
                ckpt = Path(tmp) / "run" / "checkpoints" / "last.ckpt"
                step = None
                if ckpt.exists():
                    import torch

                    step = int(torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"])
                samples.append({"minute": round((time.monotonic() - t0) / 60, 2), "rss_mb": round(rss / 2**20, 1),
                                "pss_mb": round(pss / 2**20, 1), "workers_pss_mb": round(kids / 2**20, 1),
                                "workers": len(pids),
                                "last_checkpoint_step": step})
                print(samples[-1], flush=True)
        finally:
            alive_before = [c.pid for c in p.children(recursive=True)] if proc.poll() is None else []
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            time.sleep(2)
            leaked = [pid for pid in alive_before if psutil.pid_exists(pid)
                      and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
            log.close()
        crashed = proc.returncode not in (0, -signal.SIGTERM, 143) and not samples
        tail = (Path(tmp) / "train.log").read_text()[-2000:]
    result = {"command": " ".join(cmd[1:]), "minutes": a.minutes, "interval_s": a.interval, "samples": samples,
              **summary(samples), "workers_left_after_exit": leaked, "exit_code": proc.returncode}
    if crashed:
        result["log_tail"] = tail
    print({k: v for k, v in result.items() if k != "samples"})
    save(a.name, result)


if __name__ == "__main__":
    main()
