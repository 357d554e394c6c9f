"""The two errors of the tool system.

    ToolError      raised by a tool; the model sees an ``is_error`` result with the message
    ToolLoadError  ``--tools module:attribute`` could not be loaded (one-line message)

Anything else a tool raises becomes an "internal error in tool X" result; the run goes on.
"""

from __future__ import annotations

__all__ = ["ToolError", "ToolLoadError"]


class ToolError(Exception):
    """A tool failed in a way the model can act on; the message is what the model sees."""


class ToolLoadError(Exception):
    """A ``--tools`` spec could not be turned into tools; the message says what to fix."""
