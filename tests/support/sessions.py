"""A scripted long coding session: a workspace with real files and the model's side of it.

Used by the end-to-end tests and the benchmarks, so every strategy runs the same session:
the model lists and greps the repository, reads many files (some in parallel), edits a
bug, runs the tests with bash, and finishes. Tool outputs have realistic sizes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.fakeapi import RecordedRequest, Reply, Script, text, tool_calls

__all__ = [
    "FACT_RE",
    "LongSession",
    "changes_text",
    "document_reply",
    "facts_in",
    "memory_reply",
    "planted_fact",
    "summary_text",
    "write_repository",
]

# Facts planted in the session's files, one per file (a constant's value): benchmarks count
# how many of those the session has seen are still in its context or memory.
FACT_RE = re.compile(r"fact-[a-z]-\d{2}-\d{5}")


def planted_fact(kind: str, n: int) -> str:
    """The fact planted in file `n` of a kind ("m" modules read, "w" files written)."""
    return f"fact-{kind}-{n:02d}-{(n * 7919 + 104729) % 100_000:05d}"


def facts_in(text: str) -> set[str]:
    return set(FACT_RE.findall(text))


_MODULE = '''"""Module {n}: helpers for the inventory service (part {n})."""


def price_{n}(quantity: int, unit: float) -> float:
    """Total price of {{quantity}} items at {{unit}} each, with the bulk discount."""
    # Inventory code of this report: {fact}
    total = quantity * unit
    if quantity > 100:
        total *= 0.9
    return round(total, 2)

'''


def write_repository(root: Path, files: int, lines_per_file: int) -> list[str]:
    """A small Python project: `files` modules of about `lines_per_file` lines, a bug, a test."""
    names: list[str] = []
    pkg = root / "inventory"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    for n in range(files):
        body = [_MODULE.format(n=n, fact=planted_fact("m", n))]
        for k in range(max(0, lines_per_file - 12) // 6):
            body.append(
                f"def helper_{n}_{k}(values: list[int]) -> int:\n"
                f"    # Sum of the values above {k}, used by report {n}.\n"
                f"    return sum(v for v in values if v > {k})\n\n\n"
            )
        name = f"inventory/module_{n:02d}.py"
        (root / name).write_text("".join(body))
        names.append(name)
    (root / "inventory" / "stock.py").write_text(
        "def restock(level: int, amount: int) -> int:\n    return level - amount  # bug\n"
    )
    (root / "test_stock.py").write_text(
        "from inventory.stock import restock\n\n\n"
        "def test_restock_adds():\n    assert restock(5, 3) == 8\n"
    )
    return names


def written_module(n: int, tokens: int) -> str:
    """The content of the `n`-th file a write-heavy session writes: about `tokens` tokens."""
    head = (
        f'"""Generated report {n}: one table per region."""\n\n'
        f'REPORT_CODE = "{planted_fact("w", n)}"\n\n\n'
    )
    parts = [head]
    k = 0
    while sum(map(len, parts)) < tokens * 4:
        parts.append(
            f"def region_{n}_{k}(rows: list[dict[str, int]]) -> int:\n"
            f"    # Units shipped to region {k} in report {n}.\n"
            f"    return sum(r.get('units', 0) for r in rows if r.get('region') == {k})\n\n\n"
        )
        k += 1
    return "".join(parts)[: tokens * 4]


@dataclass
class LongSession:
    """The model's side of the session: `reads` file-reading turns, then the fix.

    With `writes`, the session also writes that many new files of about `write_tokens`
    tokens each (large `tool_use` inputs): after the reads, or alternating with them when
    `interleave` is set (a mixed session).
    """

    files: list[str]
    reads: int = 60
    parallel_every: int = 5
    writes: int = 0
    write_tokens: int = 1500
    interleave: bool = False

    def _read(self, i: int) -> Reply:
        path = self.files[i % len(self.files)]
        if self.parallel_every and i % self.parallel_every == self.parallel_every - 1:
            other = self.files[(i + 7) % len(self.files)]
            return tool_calls(
                ("read_file", {"path": path}),
                ("read_file", {"path": other}),
                text=f"Reading {path} and {other} together.",
            )
        return tool_calls(("read_file", {"path": path}))

    def _write(self, n: int) -> Reply:
        path = f"reports/report_{n:02d}.py"
        return tool_calls(
            ("write_file", {"path": path, "content": written_module(n, self.write_tokens)})
        )

    def turns(self) -> list[Reply]:
        turns: list[Reply] = [
            tool_calls(("list_files", {"path": "."}), text="Let me look at the repository."),
            tool_calls(("grep", {"pattern": "def restock", "path": "."})),
        ]
        reads = [self._read(i) for i in range(self.reads)]
        writes = [self._write(n) for n in range(self.writes)]
        if self.interleave:
            for k in range(max(len(reads), len(writes))):
                turns += reads[k : k + 1] + writes[k : k + 1]
        else:
            turns += reads + writes
        turns += [
            tool_calls(("read_file", {"path": "inventory/stock.py"})),
            tool_calls(
                (
                    "edit_file",
                    {
                        "path": "inventory/stock.py",
                        "old_string": "level - amount  # bug",
                        "new_string": "level + amount",
                    },
                ),
                text="The bug: restock subtracts. Fixing it.",
            ),
            tool_calls(("bash", {"command": "python -m pytest -q test_stock.py 2>&1 | tail -3"})),
            text("Fixed `restock` in inventory/stock.py (it subtracted); test_stock.py passes."),
        ]
        return turns

    def script(self, **kwargs: Any) -> Script:
        return Script(self.turns(), memory=memory_reply, **kwargs)


_PATH_RE = re.compile(r'"path":\s*"([^"]+)"')


def memory_reply(request: RecordedRequest, output_tokens: int | None = None) -> Reply:
    """A model's short memory update: only the sections that changed."""
    body = request.body
    seen = sorted(set(_PATH_RE.findall(str(body.get("messages", [])).replace("'", '"'))))
    listed = ", ".join(seen[-12:]) or "none yet"
    update = (
        "# Session Title\nFix the restock bug in the inventory service\n\n"
        "# Current State\n"
        f"- Done: read {len(seen)} files ({listed}).\n"
        "- In progress: looking for the restock bug.\n"
        "- Next: fix inventory/stock.py and run test_stock.py.\n\n"
        "# Key results\n"
        f"- Codes seen: {', '.join(sorted(facts_in(str(body)))) or 'none yet'}.\n\n"
        "# Worklog\n"
        f"- Read {len(seen)} files so far.\n"
    )
    return text(update, output_tokens=output_tokens)


_CURRENT_MEMORY_RE = re.compile(r"<current-memory>(.*?)</current-memory>", re.S)
_WORKLOG_STEP_RE = re.compile(r"^- Step (\S+): (?:read|wrote) ([^\s;]+)", re.M)
_CALL_STEP_RE = re.compile(r"^toolu_s(\d+)_")


def changes_text(request: RecordedRequest) -> str:
    """A memory update that writes only what is new, the way the runtime asks for it.

    The current memory is in the update instruction. Every file read or written in the
    request that the memory's Worklog does not list yet gets a worklog step; files the
    memory does not name get a line in Files and Functions; codes not in Key results are
    added there (all appended); Current State is rewritten. Its size follows what the
    session did since the last update.
    """
    messages: list[dict[str, Any]] = request.body.get("messages", [])
    last = messages[-1].get("content", "") if messages else ""
    instruction = (
        last
        if isinstance(last, str)
        else "\n".join(str(b.get("text", "")) for b in last if isinstance(b, dict))
    )
    match = _CURRENT_MEMORY_RE.search(instruction)
    memory = match.group(1) if match else ""
    # The instruction also carries, verbatim, results the context holds only as tombstones.
    body = (
        str(messages[:-1])
        + _CURRENT_MEMORY_RE.sub("", instruction)
        + str(request.body.get("system", ""))
    )
    logged = dict(_WORKLOG_STEP_RE.findall(memory))
    reads: list[tuple[str, str]] = []
    for message in messages[:-1]:
        content = message.get("content")
        if message.get("role") != "assistant" or not isinstance(content, list):
            continue
        calls = [b for b in content if isinstance(b, dict) and b.get("type") == "tool_use"]
        for k, block in enumerate(calls):
            step = _CALL_STEP_RE.match(str(block.get("id", "")))
            path = (block.get("input") or {}).get("path")
            if step and isinstance(path, str):
                verb = "wrote" if block.get("name") == "write_file" else "read"
                reads.append((f"{int(step.group(1))}.{k + 1}", f"{verb} {path}"))
    new_reads = [(step, done) for step, done in reads if step not in logged]
    named = set(logged.values())
    new_files = sorted({done.split(" ", 1)[1] for _, done in new_reads} - named)
    codes = sorted(facts_in(body) - facts_in(memory))
    parts = [
        "# Current State\n"
        f"- Done: listed the repository, {len(logged) + len(new_reads)} files read or written.\n"
        "- In progress: looking for the restock bug.\n"
        "- Next: fix inventory/stock.py and run test_stock.py."
    ]
    if new_files:
        parts.append(
            "# Files and Functions (append)\n"
            + "".join(
                f"- {path}: helpers for one report; no restock logic.\n" for path in new_files
            )
        )
    if codes:
        parts.append(f"# Key results (append)\n- Codes seen: {', '.join(codes)}.\n")
    if new_reads:
        parts.append(
            "# Worklog (append)\n"
            + "".join(f"- Step {step}: {done}; not related.\n" for step, done in new_reads)
        )
    return "\n\n".join(part.rstrip() for part in parts) + "\n"


def summary_text(request: RecordedRequest, tokens: int = 3000) -> str:
    """A whole memory document (all ten headings) of about `tokens` tokens (4 chars each).

    What a model writes when it rewrites the memory or summarizes the session: the benchmarks
    use it for blocking summaries, LangChain's summaries and full memory rewrites alike, so
    every strategy carries a summary of the same size.
    """
    body = str(request.body.get("messages", [])) + str(request.body.get("system", ""))
    seen = sorted(set(_PATH_RE.findall(body.replace("'", '"')))) or ["inventory/stock.py"]
    head = (
        "# Session Title\nFix the restock bug in the inventory service\n\n"
        "# Current State\n"
        f"- Done: listed the repository, read {len(seen)} files.\n"
        "- In progress: looking for the restock bug.\n"
        "- Next: fix inventory/stock.py and run test_stock.py.\n\n"
        "# Task specification\nFix the failing restock test without changing the test.\n\n"
    )
    tail = (
        "# Workflow\nRun `python -m pytest -q test_stock.py` after each change.\n\n"
        "# Errors & Corrections\nNone so far.\n\n"
        "# Codebase and System Documentation\n"
        "inventory/ holds one module per report; stock.py holds restock().\n\n"
        "# Learnings\nThe modules are independent; only stock.py matters for the bug.\n\n"
        "# Key results\n"
        f"- Codes seen: {', '.join(sorted(facts_in(body))) or 'none yet'}.\n\n"
    )
    budget = max(0, tokens * 4 - len(head) - len(tail) - 60)
    files: list[str] = []
    worklog: list[str] = []
    k = 0
    while sum(map(len, files)) + sum(map(len, worklog)) < budget:
        path = seen[k % len(seen)]
        n = k // len(seen)
        files.append(f"- {path}: helpers for one report (pass {n}); no restock logic.\n")
        worklog.append(f"- Step {k + 1}: read {path} (pass {n}); not related to the bug.\n")
        k += 1
    return (
        head
        + "# Files and Functions\n"
        + "".join(files)
        + "\n"
        + tail
        + "# Worklog\n"
        + "".join(worklog)
    )


def document_reply(request: RecordedRequest, tokens: int = 3000) -> Reply:
    """A reply holding `summary_text` (its output tokens are counted from the text)."""
    return text(summary_text(request, tokens))
