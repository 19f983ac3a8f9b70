"""Writing files of a run directory safely: the one atomic writer, a folder lock, a write check.

Every file of a run (checkpoints, metrics.json, config.yaml, samples) is written by
`atomic_write`: the bytes go to `<name>.tmp` in the same folder, are flushed and fsynced,
then `os.replace`d onto the name, so a reader or a crash never sees half a file, and a failed
write (disk full, permissions) removes its temporary file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO


class RunDirError(OSError):
    """The run directory cannot be used: not writable, full, or locked by another process."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()  # without OSError's "[Errno N]" prefix


def _tmp_name(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp")


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call `write(f)` on a temporary file next to `path`, fsync it and move it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode())


def write_json(path: str | Path, data) -> Path:
    """`data` as indented JSON, atomically."""
    return write_text(path, json.dumps(data, indent=1))


def read_json(path: str | Path) -> dict:
    """A JSON file as a dict ({} if absent); a ValueError naming the file if it is not JSON."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); move it away to start a new one") from None


def check_writable(folder: str | Path, *, what: str = "run directory") -> Path:
    """Create `folder` and write a probe file in it, BEFORE any work: a read-only or full folder
    raises `RunDirError` naming it, and leaves nothing behind."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write_probe.{os.getpid()}.tmp"
        try:
            with open(probe, "wb") as f:
                f.write(b"\0" * 4096)
                f.flush()
                os.fsync(f.fileno())
        finally:
            probe.unlink(missing_ok=True)
    except OSError as e:
        reason = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                  errno.EROFS: "the file system is read-only",
                  errno.EACCES: "permission denied"}.get(e.errno, e.strerror or str(e))
        raise RunDirError(e.errno, f"cannot write to the {what} {folder}: {reason}; free space, "
                          "fix the permissions or choose another folder (hydra.run.dir=DIR / "
                          "out=...)") from None
    return folder


@contextlib.contextmanager
def locked(path: str | Path, *, blocking: bool = True, message: str | None = None):
    """Hold an exclusive `fcntl` lock on `path` (created if absent) for the block. Non-blocking:
    a `RunDirError` with `message` if another process holds it. Released when the process dies."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            raise RunDirError(errno.EBUSY, message or f"{path} is locked by another process") from None
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the lock
