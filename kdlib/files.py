"""Writing run artifacts so that nothing finished is ever lost.

- ``atomic_save`` / ``atomic_write_text`` / ``atomic_write_bytes``: write a temporary file in
  the same folder, then ``os.replace`` it over the target. A crash, ``kill -9``, a full or a
  read-only disk leaves either the old file or the new one, never half of one. A failed write
  raises :class:`DiskWriteError`, which names the file and the reason.
- ``RunLock``: an exclusive advisory lock on ``<run folder>/.lock`` held for the whole run, so
  two processes never write the same run folder at once. The kernel releases it when the
  process ends, however it ends, so a killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import sys
import time
from pathlib import Path

import torch

try:  # POSIX; on other systems the lock degrades to a no-op (documented in RunLock)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None


class DiskWriteError(OSError):
    """Writing an artifact failed; the previous version of the file is unchanged."""


def _write_error(path: Path, exc: OSError) -> DiskWriteError:
    reason = exc.strerror or str(exc)
    hint = {
        errno.ENOSPC: "free some disk space",
        errno.EDQUOT: "free some disk space (quota)",
        errno.EFBIG: "the file exceeds the size limit of this process or file system",
        errno.EROFS: "the file system is read-only: choose a writable folder",
        errno.EACCES: "make the folder writable or choose another one",
        errno.EPERM: "make the folder writable or choose another one",
    }.get(exc.errno, "check the folder")
    previous = "the previous version is unchanged" if path.exists() else "no earlier version existed"
    return DiskWriteError(exc.errno, f"could not write {path}: {reason} ({hint}); {previous}")


def _atomic(path, write) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        if isinstance(exc, DiskWriteError):
            raise
        raise _write_error(path, exc) from exc
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
    return path


def atomic_save(obj, path) -> Path:
    """``torch.save`` into memory, then written through a temporary file, ``fsync`` and a
    rename. Serialising first makes a short write surface as the OSError it is (ENOSPC,
    EFBIG, EROFS): writing straight to disk, torch's zip writer reports a full disk as
    ``RuntimeError: unexpected pos``. The cost is one in-memory copy of the checkpoint."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(buffer.getbuffer(), path, sync=True)


def atomic_write_text(text: str, path) -> Path:
    return _atomic(path, lambda tmp: tmp.write_text(text))


def atomic_write_bytes(data, path, sync: bool = False) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())

    return _atomic(path, write)


def save_figure_bytes(fig, path, **savefig_kwargs) -> Path:
    """Render a matplotlib figure in memory, then write it atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", **savefig_kwargs)
    return atomic_write_bytes(buffer.getvalue(), path)


def file_sha256(path) -> str:
    """The SHA-256 of a file's bytes (read in 1 MB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class RunFolderError(RuntimeError):
    """The run folder cannot be used: it holds another run, or another process is using it."""


class RunLock:
    """``with RunLock(folder):`` — hold ``folder/.lock`` exclusively, or raise RunFolderError
    naming the process that holds it. Uses ``fcntl.flock``; without fcntl (Windows) it only
    records the holder."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.path = self.folder / ".lock"
        self.handle = None

    def __enter__(self) -> RunLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            handle = open(self.path, "a+")
        except OSError as exc:
            raise _write_error(self.path, exc) from exc
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                raise RunFolderError(
                    f"{self.folder} is in use by another run ({holder}); two runs must not write "
                    "the same folder: wait for it to finish, stop it, or choose another --out"
                ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(sys.argv[:3])}\n")
        handle.flush()
        self.handle = handle
        return self

    def __exit__(self, *exc) -> None:
        if self.handle is not None:
            self.handle.close()  # closing the file releases the flock
            self.handle = None


@contextlib.contextmanager
def waiting_lock(path):
    """``with waiting_lock(path):`` — hold ``path`` exclusively, waiting for any other holder
    (for work that several processes may start at once and only one should do, such as
    building a shared cache). Without fcntl (Windows) it does not lock."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield
