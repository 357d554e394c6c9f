"""tidemark's tool system and built-in coding tools.

A tool is anything with ``name``, ``description``, ``input_schema``, ``read_only``,
``needs_approval``, ``timeout`` and ``async run(input, ctx) -> str`` (or a ``ToolOutput``
carrying images; see ``Tool``); the
``@tool`` decorator makes one of a typed function. A ``Toolset`` runs a batch of calls from
the model; an ``Approver`` decides on calls that write files or run commands.
"""

from __future__ import annotations

from .approval import Approver, AutoApprover, DenyApprover, TerminalApprover, default_approver
from .builtin import builtin_tools
from .errors import ToolError, ToolLoadError
from .function import FunctionTool, tool
from .interface import (
    FileAccess,
    Tool,
    ToolCall,
    ToolContext,
    ToolImage,
    ToolOutcome,
    ToolOutput,
    describe_call,
    describe_input,
    file_access,
)
from .loading import load_tools
from .processes import reap_leftover_processes
from .toolset import Toolset

__all__ = [
    "Approver",
    "AutoApprover",
    "DenyApprover",
    "FileAccess",
    "FunctionTool",
    "TerminalApprover",
    "Tool",
    "ToolCall",
    "ToolContext",
    "ToolError",
    "ToolImage",
    "ToolLoadError",
    "ToolOutcome",
    "ToolOutput",
    "Toolset",
    "builtin_tools",
    "default_approver",
    "describe_call",
    "describe_input",
    "file_access",
    "load_tools",
    "reap_leftover_processes",
    "tool",
]
