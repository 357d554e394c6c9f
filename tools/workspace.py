"""Confinement of paths to the workspace, safe opening and atomic writing of user files, and
the file walking the built-in tools share.

A workspace may hold anything: FIFOs, sockets and devices (never opened in a way that
blocks), symlinks out of it or into the runtime's folder (refused), names that are not
UTF-8, huge files. Every failure becomes a `ToolError` the model can act on.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .atomic import atomic_write
from .errors import ToolError

__all__ = [
    "IGNORED_DIRS",
    "MAX_EDIT_BYTES",
    "RUNTIME_DIR",
    "display_path",
    "file_kind",
    "glob_to_regex",
    "is_binary",
    "open_regular",
    "read_text",
    "resolve_path",
    "split_lines",
    "stat_path",
    "walk_files",
    "write_atomically",
]

RUNTIME_DIR = ".tidemark"
IGNORED_DIRS = frozenset({".git", RUNTIME_DIR})
MAX_EDIT_BYTES = 10_000_000  # edit_file reads the whole file into memory
_SNIFF_BYTES = 8192
# Control characters would break the one-path-per-line listings; show them escaped.
_CONTROL = {code: f"\\x{code:02x}" for code in [*range(32), 127]} | {
    ord("\n"): "\\n",
    ord("\t"): "\\t",
    ord("\r"): "\\r",
}


def resolve_path(workspace: Path, path: str, *, for_writing: bool = False) -> Path:
    """The absolute, symlink-resolved path, refused if it leaves the workspace.

    Relative paths are taken from the workspace; absolute ones must lie inside it. ``~`` is
    an ordinary name here (no shell expands it). Writing inside the runtime's own
    ``.tidemark`` folder is refused too, also through a symlink.
    """
    if "\0" in path:
        raise ToolError(f"path {path!r} contains a NUL byte")
    root = workspace.resolve()
    candidate = Path(path)
    try:
        resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
    except RuntimeError:  # Python < 3.13 reports a symlink loop this way
        raise ToolError(_describe(path, OSError(errno.ELOOP, ""))) from None
    except OSError as error:
        raise ToolError(_describe(path, error)) from None
    if not resolved.is_relative_to(root):
        raise ToolError(
            f"path escapes the workspace: {path} (use a path inside {root}, "
            "relative paths start there)"
        )
    relative = resolved.relative_to(root)
    if for_writing and relative.parts[:1] == (RUNTIME_DIR,):
        raise ToolError(f"refusing to write {path}: {RUNTIME_DIR}/ is the runtime's own folder")
    return resolved


def display_path(workspace: Path, path: Path) -> str:
    """The path as the model should write it: relative to the workspace, with slashes.

    Bytes that are not UTF-8 and control characters are shown escaped (``caf\\xe9.txt``),
    so the text is valid for the API and one path stays on one line.
    """
    relative = path.relative_to(workspace.resolve()).as_posix()
    return _printable(relative) if relative != "" else "."


def _printable(name: str) -> str:
    raw = name.encode("utf-8", "surrogateescape")
    return raw.decode("utf-8", "backslashreplace").translate(_CONTROL)


def is_binary(data: bytes) -> bool:
    return b"\0" in data[:_SNIFF_BYTES]


def file_kind(mode: int) -> str:
    """What a file that is not a regular file is, in words."""
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISFIFO(mode):
        return "named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    if stat.S_ISLNK(mode):
        return "symbolic link"
    return "special file"


def _describe(shown: str, error: OSError) -> str:
    """One line for a failed file operation, saying what to do where there is something."""
    code = error.errno
    if code in (errno.ENOENT, errno.ENOTDIR):
        return f"file not found: {shown} (use list_files to see what exists)"
    if code == errno.ENAMETOOLONG:
        return (
            f"file name too long: {shown[:80]}{'...' if len(shown) > 80 else ''} (the file "
            "system allows 255 bytes per name and 4096 per path)"
        )
    if code == errno.ELOOP:
        return f"{shown}: too many levels of symbolic links (a symlink loop)"
    if code in (errno.EACCES, errno.EPERM):
        return f"permission denied: {shown}"
    if code in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on the device for {shown}; the file was left as it was"
    if code == errno.EFBIG:
        return f"{shown}: file too large for the file system; the file was left as it was"
    if code == errno.EROFS:
        return f"{shown} is on a read-only file system"
    return f"{shown}: {error.strerror or error}"


def stat_path(workspace: Path, path: Path) -> os.stat_result | None:
    """The file's status (symlinks not followed), None if it does not exist."""
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as error:
        raise ToolError(_describe(display_path(workspace, path), error)) from None


def open_regular(workspace: Path, path: Path) -> BinaryIO:
    """Open a regular file for reading; anything else is refused without blocking.

    The type is checked before opening (a device is never opened) and again on the open
    file, which is opened non-blocking and without following a symlink, in case the path
    was swapped in between.
    """
    shown = display_path(workspace, path)
    status = stat_path(workspace, path)
    if status is None:
        raise ToolError(f"file not found: {shown} (use list_files to see what exists)")
    _refuse_special(shown, status.st_mode, "read")
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as error:
        raise ToolError(_describe(shown, error)) from None
    try:
        mode = os.fstat(fd).st_mode
        _refuse_special(shown, mode, "read")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _refuse_special(shown: str, mode: int, verb: str) -> None:
    if stat.S_ISDIR(mode):
        raise ToolError(f"{shown} is a directory, not a file (use list_files to see inside)")
    if not stat.S_ISREG(mode):
        raise ToolError(
            f"{shown} is a {file_kind(mode)}, not a regular file; refusing to {verb} it"
        )


def read_text(workspace: Path, path: Path) -> str:
    """A whole file's text for editing, or a ToolError the model can act on.

    Bytes that are not UTF-8 are kept as surrogates (``surrogateescape``), so encoding the
    edited text the same way gives those bytes back unchanged.
    """
    shown = display_path(workspace, path)
    with open_regular(workspace, path) as file:
        size = os.fstat(file.fileno()).st_size
        if size > MAX_EDIT_BYTES:
            raise ToolError(
                f"{shown} is too large to edit with edit_file ({size:,} bytes, the limit is "
                f"{MAX_EDIT_BYTES:,}); use bash (e.g. sed) for this file"
            )
        data = file.read(MAX_EDIT_BYTES + 1)
    if is_binary(data):
        raise ToolError(f"{shown} is a binary file; only text files can be edited")
    return data.decode("utf-8", "surrogateescape")


def write_atomically(workspace: Path, path: Path, data: bytes) -> bool:
    """Create or replace a user's file so that a crash leaves the old file or the new one.

    `tidemark.tools.atomic`: a temporary file in the same folder, flushed to disk and renamed
    over the target; an existing file keeps its mode (and its owner, where allowed). Returns
    whether the file existed. A full disk or any other failure is a ToolError and leaves the
    old file untouched and no temporary file behind.
    """
    shown = display_path(workspace, path)
    status = stat_path(workspace, path)
    if status is not None:
        _refuse_special(shown, status.st_mode, "replace")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ToolError(_describe(display_path(workspace, path.parent), error)) from None
    try:
        return atomic_write(path, data)
    except OSError as error:
        raise ToolError(_describe(shown, error)) from None


def split_lines(text: str) -> list[str]:
    """Lines as editors number them: split on newlines, no trailing empty line."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def walk_files(workspace: Path, root: Path, *, links: bool = False) -> Iterator[Path]:
    """Regular files under ``root``, sorted by path, skipping ``.git`` and ``.tidemark``.

    FIFOs, sockets and devices are skipped, and so are symlinked folders (the walk never
    leaves the workspace). With ``links``, symlinks to regular files inside the workspace
    (not in ``.tidemark``) are yielded too, under their own name. The walk keeps its own
    stack, so a tree of any depth is fine; folders that cannot be read are skipped.
    """
    status = stat_path(workspace, root)
    if status is None:
        return
    if not stat.S_ISDIR(status.st_mode):
        if stat.S_ISREG(status.st_mode):
            yield root
        return
    stack: list[Iterator[os.DirEntry[str]]] = [_sorted_entries(root)]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                if entry.name not in IGNORED_DIRS:
                    stack.append(_sorted_entries(Path(entry.path)))
            elif entry.is_file(follow_symlinks=False) or (
                links and entry.is_symlink() and _links_inside(workspace, Path(entry.path))
            ):
                yield Path(entry.path)
        except OSError:
            continue


def _sorted_entries(folder: Path) -> Iterator[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as entries:
            return iter(sorted(entries, key=lambda entry: entry.name))
    except OSError:  # unreadable, or a path longer than the system allows
        return iter(())


def _links_inside(workspace: Path, link: Path) -> bool:
    """Whether a symlink leads to a regular file in the workspace, outside ``.tidemark``."""
    root = workspace.resolve()
    try:
        target = link.resolve(strict=True)
        regular = stat.S_ISREG(os.stat(target).st_mode)
    except (OSError, RuntimeError):
        return False
    return (
        regular
        and target.is_relative_to(root)
        and target.relative_to(root).parts[:1] != (RUNTIME_DIR,)
    )


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Compile a glob where ``**`` spans directories and ``*`` stays within one.

    A pattern without ``/`` (``*.py``) matches file names at any depth.
    """
    if "/" not in pattern:
        pattern = "**/" + pattern
    regex = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            regex += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            regex += ".*"
            i += 2
        elif pattern[i] == "*":
            regex += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            regex += "[^/]"
            i += 1
        elif pattern[i] == "[" and (end := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1 : end].replace("\\", "\\\\")
            regex += "[^" + body[1:] + "]" if body.startswith("!") else "[" + body + "]"
            i = end + 1
        else:
            regex += re.escape(pattern[i])
            i += 1
    return re.compile(regex + r"\Z")
