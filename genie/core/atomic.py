"""The one way genie writes a file or folder that must be whole: a hidden temporary sibling, then a rename.

A reader (or a resumed run) sees either the previous complete file/folder or the new complete one,
never a half-written one: a kill, a crash or a full disk leaves at most a hidden `.NAME.*` temporary
beside it. A full disk becomes one clear `GenieInputError` naming the path.

Core helper (like `errors`): it imports nothing else from the project.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path

from genie.core.errors import GenieInputError


def _fsync_dir(d: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def is_disk_full(e: BaseException) -> bool:
    """ENOSPC/EDQUOT, also when a library (safetensors, pyarrow) wraps it in its own error type."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e).lower()
    return "no space left" in text or "os error 28" in text or "disk quota" in text


def disk_full_error(path: str | os.PathLike) -> GenieInputError:
    return GenieInputError(f"{path}: no space left on device; nothing was written there")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike):
    """Yield a temporary path beside `path`; when the block succeeds it is synced and renamed to `path`.

    On any failure the temporary file is removed and `path` is left as it was.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    # hidden, and with the final suffix, so writers that pick a format by extension (PyAV, Pillow) still do
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=final.suffix, dir=final.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if is_disk_full(e):
            raise disk_full_error(final) from None
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode())


def temp_dir_beside(out: str | os.PathLike) -> Path:
    """A hidden, empty folder next to `out` to build its new contents in (then `replace_dir`)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))


def replace_dir(tmp: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Move the finished folder `tmp` to `out`, replacing any previous `out`.

    The previous folder is first renamed aside (not deleted), so at every moment `out` is either the
    old complete folder or the new one (or, for an instant, absent) — never a mix of the two.
    """
    tmp, out = Path(tmp), Path(out)
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
    os.replace(tmp, out)
    _fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out
