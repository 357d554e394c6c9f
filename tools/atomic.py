"""Atomic file replacement: the one routine every file tidemark writes whole goes through.

The data goes to a temporary file in the target's folder, is flushed to disk (fsync), and the
temporary file is renamed over the target, then the folder is synced so the rename itself
survives a power cut. A crash at any point leaves the old file or the new one, never a mix or
an empty file; a failure leaves the old file untouched and no temporary file behind. An
existing file keeps its mode (and its owner, where allowed).

It lives in the tool system (which never imports the runtime) so the file tools, process
supervision and the runtime (`tidemark.storage`) all share it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Generator
from pathlib import Path
from typing import BinaryIO, NamedTuple

__all__ = ["Replacement", "atomic_write", "replacing"]

# The temporary name is short whatever the target's name (names may be 255 bytes long).
_NAME_PART = 64


def atomic_write(path: Path, data: bytes | str) -> bool:
    """Create or replace `path` with `data` (str as UTF-8), atomically and durably.

    Returns whether the file existed. Raises OSError (the old file untouched) on failure.
    """
    with replacing(path) as new:
        new.file.write(data.encode("utf-8") if isinstance(data, str) else data)
    return new.existed


class Replacement(NamedTuple):
    file: BinaryIO  # the new content goes here
    temporary: Path  # where it is until the block ends (to check it before it replaces)
    existed: bool  # whether the target existed


@contextlib.contextmanager
def replacing(path: Path) -> Generator[Replacement]:
    """Write a new `path` in a block (for content written in pieces). When the block ends
    normally the new file replaces `path`; when it raises (a failed check, say), `path` is
    untouched and the temporary file is removed.

    A symlink at `path` is replaced by the file, never followed. The folder is created.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        status: os.stat_result | None = os.lstat(path)
    except FileNotFoundError:
        status = None
    temporary = path.parent / f".{path.name[:_NAME_PART]}.{secrets.token_hex(6)}.tmp"
    # 0o666 lets the umask decide a new file's mode, as for any program creating one.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temporary, flags, 0o666)
    try:
        with os.fdopen(fd, "wb") as file:
            if status is not None and stat.S_ISREG(status.st_mode):
                _keep_owner_and_mode(file.fileno(), status)
            yield Replacement(file, temporary, status is not None)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


def _keep_owner_and_mode(fd: int, status: os.stat_result) -> None:
    os.fchmod(fd, stat.S_IMODE(status.st_mode))
    if (status.st_uid, status.st_gid) != (os.geteuid(), os.getegid()):
        # Only root may give a file away; the content matters more.
        with contextlib.suppress(PermissionError):
            os.fchown(fd, status.st_uid, status.st_gid)


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable (best effort: some file systems refuse)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
