"""Durable files: whole-file atomic writes, whole-line JSONL appends, and tolerant reading."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from tidemark.tools.atomic import atomic_write

__all__ = ["JsonlAppender", "atomic_write_text", "read_jsonl"]


def atomic_write_text(path: Path, text: str) -> None:
    """Replace `path` with `text`: temp file in the same folder, fsync, rename, fsync folder
    (`tidemark.tools.atomic`, the one routine for whole-file writes).

    A crash at any point leaves the old file or the new one, never a mix or an empty file.
    """
    atomic_write(path, text)


class JsonlAppender:
    """Appends one JSON object per line, a whole line per write, flushed at once.

    If the file ends in a torn line (a crash mid-write), a newline is written first so new
    records never continue it; readers skip the torn line.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        needs_newline = False
        if path.exists() and path.stat().st_size > 0:
            with path.open("rb") as f:
                f.seek(-1, os.SEEK_END)
                needs_newline = f.read(1) != b"\n"
        self._f: TextIO | None = path.open("a", encoding="utf-8")
        if needs_newline:
            self._f.write("\n")
            self._f.flush()

    def append(self, record: dict[str, Any]) -> None:
        if self._f is None:
            raise ValueError(f"{self.path} is closed")
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
        self._f.write(line)
        self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Yield each record; a torn or corrupt line is skipped with a warning."""
    if not path.exists():
        return
    with path.open("r", encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                warnings.warn(
                    f"{path.name}: skipped a damaged line {lineno}", RuntimeWarning, stacklevel=2
                )
                continue
            if isinstance(record, dict):
                yield record  # pyright: ignore[reportReturnType]
