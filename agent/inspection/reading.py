"""Reading a session's files for `tidemark inspect`: events and the transcript's marks.

Damaged lines are skipped and counted (`Damage`), so the rest can be shown with one warning
line on stderr.
"""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Generator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tidemark.messages import Message
from tidemark.storage import read_jsonl
from tidemark.transcript import ContextRecord, decode_transcript

__all__ = ["CompactionMark", "Damage", "Event", "read_events", "read_transcript", "warn"]

Event = dict[str, Any]


@dataclass
class Damage:
    """Lines of a session file that could not be read."""

    file: str
    lines: list[int] = field(default_factory=list[int])  # line numbers that are not JSON
    unusable: int = 0  # readable records that are not what the file should hold

    @property
    def count(self) -> int:
        return len(self.lines) + self.unusable

    def warning(self) -> str | None:
        if not self.count:
            return None
        parts: list[str] = []
        if self.lines:
            where = ", ".join(map(str, self.lines[:5])) + (", ..." if len(self.lines) > 5 else "")
            plural = "s" if len(self.lines) > 1 else ""
            parts.append(f"{len(self.lines)} damaged line{plural} ({where})")
        if self.unusable:
            parts.append(f"{self.unusable} unusable record{'s' if self.unusable > 1 else ''}")
        return f"tidemark: warning: {self.file}: skipped {' and '.join(parts)}; showing the rest"


_LINE_RE = re.compile(r"damaged line (\d+)")


def read_records(path: Path) -> tuple[list[Event], Damage]:
    """All records of a JSONL file, and which lines were damaged."""
    damage = Damage(path.name)
    with _damaged_lines(damage):
        records = list(read_jsonl(path))
    return records, damage


@contextmanager
def _damaged_lines(damage: Damage) -> Generator[None]:
    """Notes in `damage` the lines `read_jsonl` skips (it warns about each)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        found = _LINE_RE.search(str(warning.message))
        if found:
            damage.lines.append(int(found.group(1)))


def read_events(path: Path) -> tuple[list[Event], Damage]:
    """A session's events, oldest first; records without an event name count as damage."""
    records, damage = read_records(path)
    events = [r for r in records if isinstance(r.get("event"), str)]
    damage.unusable = len(records) - len(events)
    return events, damage


def warn(*damages: Damage) -> None:
    for damage in damages:
        text = damage.warning()
        if text:
            print(text, file=sys.stderr)


@dataclass
class CompactionMark:
    """Where the context was rebuilt, and what it kept."""

    after_index: int  # the last transcript message before the context was rebuilt
    kept: set[str]
    tombstoned: set[str]  # tool_use ids whose results are tombstoned
    summary: bool


def read_transcript(path: Path) -> tuple[list[Message], list[CompactionMark], Damage]:
    """Every message of the transcript, and a mark for each compaction in it."""
    damage = Damage(path.name)
    messages: list[Message] = []
    compactions: list[CompactionMark] = []
    with _damaged_lines(damage):
        for _, record in decode_transcript(path):
            if isinstance(record, Message):
                messages.append(record)
            elif isinstance(record, ContextRecord):
                compactions.append(
                    CompactionMark(
                        after_index=len(messages) - 1,
                        kept=set(record.message_ids),
                        tombstoned=set(record.tombstones),
                        summary=record.summary is not None,
                    )
                )
            else:
                damage.unusable += 1
    return messages, compactions, damage
