"""The built-in coding tools: read_file, write_file, edit_file, list_files, grep, bash."""

from __future__ import annotations

from ..interface import Tool
from .files import edit_file, read_file, write_file
from .search import grep, list_files
from .shell import bash

__all__ = ["bash", "builtin_tools", "edit_file", "grep", "list_files", "read_file", "write_file"]


def builtin_tools() -> list[Tool]:
    """The built-in tools, in the order the model sees them."""
    return [read_file, write_file, edit_file, list_files, grep, bash]
