"""The session memory document: template, merge of partial updates, validation, storage.

The file is markdown with the contract's ten level-1 headings, each followed by an italic
description line. The runtime keeps a few facts itself (the user's task verbatim, files
touched, the last tool error) in subsections marked "(kept by tidemark)", so they survive
even a poor summary. The last line is an HTML comment recording which message the memory
covers; it is written in the same atomic replace as the document.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tidemark.storage import atomic_write_text

__all__ = [
    "SECTIONS",
    "MemoryDocument",
    "MemoryStore",
    "MemoryUpdateError",
    "RuntimeRecord",
    "merge_update",
    "render_template",
    "validate_document",
]

SECTIONS: tuple[tuple[str, str], ...] = (
    ("Session Title", "A short and distinctive 5-10 word title for this session"),
    ("Current State", "What is being worked on right now, what is done, the immediate next step"),
    ("Task specification", "What the user asked for: goals, requirements, constraints, decisions"),
    ("Files and Functions", "Important files and functions: what they hold and why they matter"),
    ("Workflow", "Commands run and how: build, test, run; their usual order and output"),
    ("Errors & Corrections", "Errors met and how they were fixed; approaches that failed"),
    ("Codebase and System Documentation", "How the system fits together; key components"),
    ("Learnings", "What worked, what did not, what to avoid"),
    ("Key results", "Exact outputs the user asked for: answers, figures, tables"),
    ("Worklog", "Step by step, very terse: what was tried and done"),
)
HEADINGS = tuple(h for h, _ in SECTIONS)
_DESCRIPTIONS = dict(SECTIONS)
KEPT_MARK = "(kept by tidemark)"
_MARKER_RE = re.compile(r"<!--\s*tidemark-memory\s+(.*?)-->\s*$", re.S)
_HEADING_RE = re.compile(r"# (.+?)\s*")
_FENCE_RE = re.compile(r"^\s*```[a-zA-Z]*\s*\n(.*?)\n\s*```\s*$", re.S)


class MemoryUpdateError(Exception):
    """An update was rejected; the previous memory stays."""


def render_template() -> str:
    return "\n\n".join(f"# {h}\n_{d}_\n" for h, d in SECTIONS).rstrip() + "\n"


def _strip_fence(text: str) -> str:
    m = _FENCE_RE.match(text.strip())
    return m.group(1) if m else text


def parse_sections(text: str) -> dict[str, str]:
    """Bodies of the known level-1 sections (description line removed), in file order."""
    text = _MARKER_RE.sub("", _strip_fence(text))
    found: dict[str, str] = {}
    current: str | None = None
    body: list[str] = []
    in_fence = False

    def close() -> None:
        if current is not None:
            lines = "\n".join(body).strip("\n").split("\n")
            if lines and re.fullmatch(r"\s*_[^_].*_\s*", lines[0]):
                lines = lines[1:]
            found[current] = "\n".join(lines).strip()

    for line in text.split("\n"):
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
        m = _HEADING_RE.fullmatch(line) if not in_fence else None
        if m and m.group(1).strip() in _DESCRIPTIONS:
            close()
            current, body = m.group(1).strip(), []
        elif current is not None:
            body.append(line)
    close()
    return found


def _drop_kept(body: str) -> str:
    """Remove runtime-kept subsections: the model may echo them, the runtime rewrites them."""
    out: list[str] = []
    skipping = False
    for line in body.split("\n"):
        if line.startswith("## "):
            skipping = KEPT_MARK in line
        if not skipping:
            out.append(line)
    return "\n".join(out).strip()


@dataclass
class RuntimeRecord:
    """Facts the runtime keeps itself, not the model."""

    user_messages: list[str] = field(default_factory=list[str])
    files_read: list[str] = field(default_factory=list[str])
    files_modified: list[str] = field(default_factory=list[str])
    last_error: str | None = None

    def note_file(self, path: str, modified: bool) -> None:
        target = self.files_modified if modified else self.files_read
        if path in target:
            target.remove(path)
        target.append(path)
        del target[:-30]

    def subsections(self) -> dict[str, str]:
        kept: dict[str, str] = {}
        if self.user_messages:
            quoted = "\n\n".join(
                "> " + _clip(t, 2000).replace("\n", "\n> ") for t in self.user_messages[-5:]
            )
            kept["Task specification"] = f"## The user's words {KEPT_MARK}\n{quoted}"
        if self.files_read or self.files_modified:
            lines: list[str] = []
            if self.files_modified:
                lines.append("- modified: " + ", ".join(self.files_modified))
            if self.files_read:
                lines.append("- read: " + ", ".join(self.files_read))
            kept["Files and Functions"] = f"## Files touched {KEPT_MARK}\n" + "\n".join(lines)
        if self.last_error:
            kept["Errors & Corrections"] = (
                f"## Last tool error {KEPT_MARK}\n{_clip(self.last_error, 500)}"
            )
        return kept


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class MemoryDocument:
    """A validated memory: section bodies (model-written) and what it covers."""

    sections: dict[str, str]
    covers_message_id: str | None = None
    update: int = 0

    @classmethod
    def empty(cls) -> MemoryDocument:
        return cls(sections={h: "" for h in HEADINGS})

    @property
    def is_empty(self) -> bool:
        return not any(_drop_kept(b) for b in self.sections.values())

    def render(self, record: RuntimeRecord | None = None, *, marker: bool = False) -> str:
        kept = record.subsections() if record else {}
        chunks: list[str] = []
        for heading, description in SECTIONS:
            body = _drop_kept(self.sections.get(heading, ""))
            extra = kept.get(heading)
            parts = [p for p in (extra, body) if p]
            chunks.append(
                f"# {heading}\n_{description}_\n" + ("\n" + "\n\n".join(parts) if parts else "")
            )
        text = "\n\n".join(c.rstrip() for c in chunks) + "\n"
        if marker and self.covers_message_id:
            text += (
                f"\n<!-- tidemark-memory covers={self.covers_message_id} update={self.update} -->\n"
            )
        return text


NO_CHANGES = "NO CHANGES"


def merge_update(current: MemoryDocument, reply: str) -> dict[str, str]:
    """Sections after applying a model reply: the changed sections only, or the whole document.

    A reply of exactly ``NO CHANGES`` keeps the document as it is. A reply with no known
    heading is rejected. Kept subsections in the reply are ignored.
    """
    if reply.strip().strip(".").upper() == NO_CHANGES:
        return dict(current.sections)
    parsed = parse_sections(reply)
    if not parsed:
        raise MemoryUpdateError("the update contains none of the memory's headings")
    merged = dict(current.sections)
    for heading, body in parsed.items():
        merged[heading] = _drop_kept(body)
    return merged


def validate_document(
    sections: dict[str, str],
    *,
    estimate: Callable[[str], int],
    max_tokens: int,
    section_tokens: int,
) -> None:
    """Raise MemoryUpdateError unless every heading is there, it is not empty, and within limits.

    Sections may run over their soft limit by half before the update is refused; the total
    limit is hard.
    """
    missing = [h for h in HEADINGS if h not in sections]
    if missing:
        raise MemoryUpdateError(f"the update drops headings: {', '.join(missing)}")
    if not any(b.strip() for b in sections.values()):
        raise MemoryUpdateError("the update is empty")
    total = 0
    for heading in HEADINGS:
        size = estimate(sections[heading])
        total += size
        if size > section_tokens * 3 // 2:
            raise MemoryUpdateError(
                f"section {heading!r} is {size} tokens, over the limit of {section_tokens}"
            )
    if total > max_tokens:
        raise MemoryUpdateError(f"the memory is {total} tokens, over the limit of {max_tokens}")


class MemoryStore:
    """The memory file of one session; replaced atomically, never edited in place."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> MemoryDocument | None:
        if not self.path.exists():
            return None
        text = self.path.read_text(encoding="utf-8")
        covers: str | None = None
        update = 0
        m = _MARKER_RE.search(text)
        if m:
            fields = dict(kv.split("=", 1) for kv in m.group(1).split() if "=" in kv)
            covers = fields.get("covers")
            update = int(fields.get("update", "0") or 0)
        sections = parse_sections(text)
        for heading in HEADINGS:
            sections.setdefault(heading, "")
        return MemoryDocument(sections=sections, covers_message_id=covers, update=update)

    def save(self, document: MemoryDocument, record: RuntimeRecord | None) -> str:
        text = document.render(record, marker=True)
        atomic_write_text(self.path, text)
        return text


def describe_rules(max_tokens: int, section_tokens: int) -> str:
    lines = [f"- `# {h}`: {d}" for h, d in SECTIONS]
    return (
        "The memory has exactly these level-1 sections, in this order:\n"
        + "\n".join(lines)
        + f"\nLimits: about {section_tokens} tokens per section and {max_tokens} in all; "
        "when a section grows past its limit, condense it (keep decisions, file paths, "
        "errors and exact results; drop narration)."
    )
