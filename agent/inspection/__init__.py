"""`tidemark inspect`: a session's timeline and summary, the list of sessions, and the
transcript with the memory boundaries and compaction points marked.

In three steps, each its own module: `reading` the session's files (damaged lines are
skipped and counted, one warning line on stderr), `summary` (totals, cost, the list's rows,
the transcript's view; plain data), and `render` (rich tables on a terminal, plain text when
piped); `command` puts them together. The price table is `tidemark.prices`.
"""

from __future__ import annotations

from tidemark.inspection.command import inspect_command
from tidemark.inspection.reading import Damage, read_events
from tidemark.inspection.summary import Summary, summarize

__all__ = ["Damage", "Summary", "inspect_command", "read_events", "summarize"]
