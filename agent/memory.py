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
    "APPEND_MARK",
    "SECTIONS",
    "MemoryDocument",
    "MemoryStore",
    "MemoryUpdateError",
    "RuntimeRecord",
    "head_and_tail",
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
# A heading with this suffix in an update adds lines at the end of the section instead of
# replacing it: an update then writes what is new (a worklog line, a result), not the whole
# section again. Output tokens are what makes an update slow.
APPEND_MARK = "(append)"
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


def parse_sections(text: str, *, appends: bool = False) -> dict[str, str]:
    """Bodies of the known level-1 sections (description line removed), in file order.

    With ``appends``, a heading written ``# Worklog (append)`` is kept under the key
    ``"Worklog (append)"`` (see `merge_update`).
    """
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
        name = m.group(1).strip() if m else ""
        if appends and name.endswith(APPEND_MARK):
            base = name.removesuffix(APPEND_MARK).strip()
            name = f"{base} {APPEND_MARK}" if base in _DESCRIPTIONS else ""
        if name and (name in _DESCRIPTIONS or name.endswith(APPEND_MARK)):
            close()
            current, body = name, []
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
    """Facts the runtime keeps itself, not the model.

    Each kept subsection is held to ``kept_chars`` (half a section's limit by default), so
    the file as written stays within the memory's limits with room left for the model.
    """

    user_messages: list[str] = field(default_factory=list[str])
    files_read: list[str] = field(default_factory=list[str])
    files_modified: list[str] = field(default_factory=list[str])
    last_error: str | None = None
    kept_chars: int = 4_000

    def note_file(self, path: str, modified: bool) -> None:
        target = self.files_modified if modified else self.files_read
        if path in target:
            target.remove(path)
        target.append(path)
        del target[:-30]

    def note_error(self, text: str) -> None:
        # Bounded here too: a failing command's output can be large.
        self.last_error = head_and_tail(text, 20_000)

    def subsections(self) -> dict[str, str]:
        kept: dict[str, str] = {}
        room = max(200, self.kept_chars)
        if self.user_messages:
            header = f"## The user's words {KEPT_MARK}\n"
            quoted: list[str] = []
            used = len(header)
            # Newest first: the latest instructions matter most; older ones are in context.
            for text in reversed(self.user_messages[-5:]):
                left = room - used - 4
                if left < 80:
                    break
                quote = "> " + _clip(text, left).replace("\n", "\n> ")
                if len(quote) > left:
                    quote = _clip(quote, left)
                quoted.insert(0, quote)
                used += len(quote) + 2
            kept["Task specification"] = header + "\n\n".join(quoted)
        if self.files_read or self.files_modified:
            lines: list[str] = []
            if self.files_modified:
                lines.append("- modified: " + ", ".join(reversed(self.files_modified)))
            if self.files_read:
                lines.append("- read: " + ", ".join(reversed(self.files_read)))
            body = _clip("\n".join(lines), room - 40)
            kept["Files and Functions"] = f"## Files touched {KEPT_MARK}\n" + body
        if self.last_error:
            error = head_and_tail(self.last_error, min(room - 40, 1_500))
            kept["Errors & Corrections"] = f"## Last tool error {KEPT_MARK}\n{error}"
        return kept


def head_and_tail(text: str, limit: int) -> str:
    """At most ``limit`` chars: the start and the end (where a traceback names its error)."""
    if len(text) <= limit:
        return text
    marker = f"\n[... {len(text) - limit:,} chars cut ...]\n"
    keep = max(0, limit - len(marker))
    head = keep * 2 // 5
    return text[:head] + marker + text[len(text) - (keep - head) :]


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

    def section_texts(self, record: RuntimeRecord | None = None) -> dict[str, str]:
        """Each section as written: heading, description, kept subsection, the model's body."""
        kept = record.subsections() if record else {}
        out: dict[str, str] = {}
        for heading, description in SECTIONS:
            body = _drop_kept(self.sections.get(heading, ""))
            parts = [p for p in (kept.get(heading), body) if p]
            out[heading] = f"# {heading}\n_{description}_\n" + (
                "\n" + "\n\n".join(parts) if parts else ""
            )
        return out

    def render(self, record: RuntimeRecord | None = None, *, marker: bool = False) -> str:
        chunks = self.section_texts(record).values()
        text = "\n\n".join(c.rstrip() for c in chunks) + "\n"
        if marker and self.covers_message_id:
            text += (
                f"\n<!-- tidemark-memory covers={self.covers_message_id} update={self.update} -->\n"
            )
        return text


NO_CHANGES = "NO CHANGES"


def merge_update(current: MemoryDocument, reply: str) -> dict[str, str]:
    """Sections after applying a model reply: the changed sections only, or the whole document.

    A reply of exactly ``NO CHANGES`` keeps the document as it is. A section written under
    its heading replaces that section; under ``# Heading (append)`` its lines are added at
    the end of the section. A reply with no known heading is rejected, and so is a
    whole-document rewrite (more than half the headings replaced) that drops one. Kept
    subsections in the reply are ignored.
    """
    if reply.strip().strip(".").upper() == NO_CHANGES:
        return dict(current.sections)
    parsed = parse_sections(reply, appends=True)
    if not parsed:
        raise MemoryUpdateError("the update contains none of the memory's headings")
    replaced = [h for h in parsed if h in _DESCRIPTIONS]
    if len(replaced) > len(HEADINGS) // 2:
        # More than half the headings: a rewrite of the whole document, which must keep
        # every heading (a dropped one is not refilled from the old document).
        missing = [h for h in HEADINGS if h not in parsed]
        if missing:
            raise MemoryUpdateError(f"the update drops headings: {', '.join(missing)}")
    merged = dict(current.sections)
    for heading, body in parsed.items():
        if heading in _DESCRIPTIONS:
            merged[heading] = _drop_kept(body)
    for heading, body in parsed.items():
        added = _drop_kept(body)
        if heading.endswith(APPEND_MARK) and added:
            base = heading.removesuffix(APPEND_MARK).strip()
            merged[base] = f"{merged.get(base, '').rstrip()}\n{added}".strip()
    return merged


def validate_document(
    sections: dict[str, str],
    *,
    estimate: Callable[[str], int],
    max_tokens: int,
    section_tokens: int,
    record: RuntimeRecord | None = None,
) -> None:
    """Raise MemoryUpdateError unless every heading is there, it is not empty, and within limits.

    The limits apply to the file as it would be written: each section with the runtime's
    own subsections, and the whole rendered document.
    """
    missing = [h for h in HEADINGS if h not in sections]
    if missing:
        raise MemoryUpdateError(f"the update drops headings: {', '.join(missing)}")
    if not any(_drop_kept(b) for b in sections.values()):
        raise MemoryUpdateError("the update is empty")
    document = MemoryDocument(sections=sections)
    for heading, text in document.section_texts(record).items():
        size = estimate(text)
        if size > section_tokens:
            raise MemoryUpdateError(
                f"section {heading!r} is {size} tokens, over the limit of {section_tokens}"
            )
    total = estimate(document.render(record, marker=True))
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
