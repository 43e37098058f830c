"""A write that stops half-way, for tests/test_atomic.py: run a command as

    python tests/stall_write.py NAME[:K] -m genie train ...     or     python tests/stall_write.py NAME[:K] -c CODE ...

and the K-th (default first) time a finished temporary is about to replace a file or folder called NAME, half
of it (of its largest file, for a folder) is cut off and the process hangs, as a process killed in the middle
of writing it would have left it; the test then SIGKILLs it. Everything genie writes whole ends in
genie.core.atomic's rename, patched here in this process alone, so the production code carries no test hook.
"""

from __future__ import annotations

import os
import runpy
import sys
import time
from pathlib import Path

MARK = "stall_write: stalled while writing"


def _stall(tmp: Path, final: Path) -> None:
    files = [tmp] if tmp.is_file() else sorted((p for p in tmp.rglob("*") if p.is_file()), key=lambda p: -p.stat().st_size)
    if files:
        with open(files[0], "r+b") as f:
            f.truncate(files[0].stat().st_size // 2)
    print(f"{MARK} {final}", flush=True)
    while True:
        time.sleep(1)


def install(spec: str) -> None:
    """Patch, in this process, the two renames genie.core.atomic ends a whole write with."""
    from genie.core import atomic

    name, _, k = spec.partition(":")
    target, seen = int(k or 1), [0]
    real_replace, real_replace_dir = os.replace, atomic.replace_dir

    def asked(final: Path) -> bool:
        if final.name != name:
            return False
        seen[0] += 1
        return seen[0] == target

    def replace(src, dst, *args, **kwargs):  # a file: its hidden temporary renamed onto NAME (atomic_file)
        if Path(src).is_file() and Path(src).name.startswith(".") and asked(Path(dst)):
            _stall(Path(src), Path(dst))
        return real_replace(src, dst, *args, **kwargs)

    def replace_dir(tmp, out):  # a folder: before the previous one is moved aside (replace_dir)
        if asked(Path(out)):
            _stall(Path(tmp), Path(out))
        return real_replace_dir(tmp, out)

    os.replace, atomic.replace_dir = replace, replace_dir


if __name__ == "__main__":
    install(sys.argv[1])
    mode, arg, rest = sys.argv[2], sys.argv[3], sys.argv[4:]
    if mode == "-m":
        sys.argv = [arg, *rest]
        runpy.run_module(arg, run_name="__main__", alter_sys=True)
    elif mode == "-c":
        sys.argv = ["-c", *rest]
        exec(compile(arg, "<string>", "exec"), {"__name__": "__main__"})
    else:
        sys.exit(f"usage: {sys.argv[0]} NAME[:K] -m MODULE ARGS... | -c CODE ARGS...")
