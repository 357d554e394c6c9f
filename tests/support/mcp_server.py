"""A small MCP server written with the official SDK, run as a subprocess by the tests.

    python mcp_server.py [stdio | http PORT]

Its tools: `add` (a result), `fail` (an error result), `note` (keeps a list in the
process), `crash` (the process dies mid-call), `slow`, `picture` (an image result), `chart`
(a text and an image) and `bitmap` (an image the Messages API does not take). When
MCP_TEST_PID_FILE is set, the server writes its pid there on start.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.utilities.types import Image

server = MCPServer("notes")
_notes: list[str] = []

# A 1x1 transparent PNG.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


@server.tool()
def add(a: int, b: int) -> str:
    """Add two whole numbers and return the sum."""
    return str(a + b)


@server.tool()
def fail(reason: str) -> str:
    """Always fails, with the reason given."""
    raise ToolError(f"failed on purpose: {reason}")


@server.tool()
def note(text: str) -> str:
    """Remember a note for the rest of this server's life; returns every note so far."""
    _notes.append(text)
    return "\n".join(_notes)


@server.tool()
def crash() -> str:
    """The server process dies while answering."""
    sys.stdout.flush()
    os._exit(9)


@server.tool()
def slow(seconds: float) -> str:
    """Sleep, then answer."""
    time.sleep(seconds)
    return "slept"


@server.tool()
def picture() -> Image:
    """A tiny PNG image."""
    return Image(data=PNG, format="png")


@server.tool()
def chart(title: str) -> list[str | Image]:
    """A chart: a caption, then the image."""
    return [f"Chart: {title}", Image(data=PNG, format="png")]


@server.tool()
def bitmap() -> Image:
    """An image in a format the Messages API does not take (BMP)."""
    return Image(data=b"BM" + bytes(60), format="bmp")


if __name__ == "__main__":
    pid_file = os.environ.get("MCP_TEST_PID_FILE")
    if pid_file:
        Path(pid_file).write_text(str(os.getpid()))
    if len(sys.argv) > 2 and sys.argv[1] == "http":
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run("stdio")
