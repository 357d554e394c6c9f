"""MCP tool servers, through the official `mcp` SDK: their tools join the session's toolset.

`connect_mcp_servers` starts (stdio) or connects to (streamable HTTP) every configured
server, lists its tools and yields them as `McpTool`s named ``mcp__<server>__<tool>``, with
the server's description and input schema. The servers live as long as the ``async with``
block: the session. A stdio server runs under the same supervisor as ``bash`` commands, so
its whole process group ends even when the runtime is killed with SIGKILL.

A call's result maps to a tool result: text as text, images (PNG, JPEG, GIF, WebP up to
5 MB: what the Messages API takes) as image blocks after the text, other blocks as a
one-line note; an error result (or a server that went away) becomes an ``is_error`` result
and the session goes on. Servers not marked ``trusted`` need approval, like ``bash``.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import AsyncGenerator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, cast

import anyio

from tidemark.config_file import McpServerConfig
from tidemark.errors import ConfigError
from tidemark.tools import ToolContext, ToolError, ToolImage, ToolOutput
from tidemark.tools.processes import supervised_argv

__all__ = ["McpTool", "connect_mcp_servers", "mcp_tool_name"]

STARTUP_TIMEOUT_S = 30.0
_NAME_PART = re.compile(r"[^A-Za-z0-9_-]")


def mcp_tool_name(server: str, tool: str) -> str:
    """``mcp__<server>__<tool>``, kept to what the Messages API accepts in a tool name."""
    return f"mcp__{server}__{_NAME_PART.sub('_', tool)}"[:64]


@dataclass
class _Server:
    """One connected server; `gone` says why it can no longer be called."""

    name: str
    config: McpServerConfig
    session: Any = None  # mcp.ClientSession, typed loosely: the SDK is an optional extra
    gone: str | None = None
    argv: list[str] | None = None  # a stdio server's command line, under its supervisor

    async def call(self, tool: str, arguments: dict[str, Any]) -> str | ToolOutput:
        if self.gone is not None:
            raise ToolError(self.gone)
        from mcp import MCPError

        try:
            result = await self.session.call_tool(tool, arguments)
        except (MCPError, anyio.ClosedResourceError, anyio.BrokenResourceError) as exc:
            message = str(exc) or type(exc).__name__
            if not isinstance(exc, MCPError) or "closed" in message.lower():
                self.gone = (
                    f"MCP server {self.name} is not running any more ({message}); its tools "
                    "cannot be used in this session: carry on without them"
                )
                raise ToolError(self.gone) from None
            raise ToolError(f"MCP server {self.name}: {message}") from None
        text, images = _render(result.content)
        if result.is_error:
            raise ToolError(text or f"{tool} failed (the server gave no reason)")
        if not text and not images and result.structured_content is not None:
            import json

            text = json.dumps(result.structured_content, ensure_ascii=False)
        if images:
            return ToolOutput(text, tuple(images))
        return text or "(no output)"


# What the Messages API takes as an image block: these types, at most 5 MB each.
IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
IMAGE_MAX_BYTES = 5 * 1024 * 1024


def _render(content: list[Any]) -> tuple[str, list[ToolImage]]:
    """Text blocks verbatim, images the model can take as images, anything else as a
    one-line note the model can act on."""
    parts: list[str] = []
    images: list[ToolImage] = []
    for block in content:
        kind = getattr(block, "type", "")
        if kind == "text":
            parts.append(block.text)
        elif kind in ("image", "audio"):
            size = len(block.data) * 3 // 4  # base64
            if kind == "image" and block.mime_type in IMAGE_TYPES and size <= IMAGE_MAX_BYTES:
                images.append(ToolImage(block.mime_type, block.data))
                continue
            parts.append(f"[{kind} result: {block.mime_type}, about {size:,} bytes, not shown]")
        elif kind == "resource_link":
            parts.append(f"[resource: {block.uri}]")
        elif kind == "resource":
            resource = block.resource
            body = getattr(resource, "text", None)
            parts.append(body if body is not None else f"[resource: {resource.uri}]")
        else:
            parts.append(f"[{kind or 'unknown'} result block]")
    return "\n".join(parts), images


@dataclass
class McpTool:
    """One tool of an MCP server, as the runtime's `Tool`."""

    name: str
    description: str
    input_schema: dict[str, Any]
    server: _Server = field(repr=False)
    remote_name: str = ""
    read_only: bool = False
    needs_approval: bool = True
    timeout: float | None = None

    @property
    def server_name(self) -> str:
        return self.server.name

    @property
    def source(self) -> str:
        where = self.server.config.source
        return f"mcp server {self.server.name}" + (f" ({where})" if where else "")

    async def run(self, input: dict[str, Any], ctx: ToolContext) -> str | ToolOutput:
        return await self.server.call(self.remote_name, input)


@asynccontextmanager
async def connect_mcp_servers(
    servers: Mapping[str, McpServerConfig],
    *,
    workspace: Path,
    log_dir: Path | None = None,
) -> AsyncGenerator[list[McpTool]]:
    """Start every server, yield their tools; leaving the block stops them all.

    A server that cannot start (or list its tools) is a `ConfigError` naming it, where it
    was declared and why. Stdio servers' stderr goes to ``log_dir/<name>.log``.
    """
    if not servers:
        yield []
        return
    try:
        import mcp  # noqa: F401  # pyright: ignore[reportUnusedImport]
    except ImportError:
        raise ConfigError(
            "MCP servers are configured but the mcp package is missing: pip install 'tidemark[mcp]'"
        ) from None
    failure: str | None = None
    started: list[_Server] = []
    try:
        async with AsyncExitStack() as stack:
            tools: list[McpTool] = []
            try:
                tools = await _start_all(stack, servers, workspace, log_dir, started)
            except ConfigError as exc:
                failure = str(exc)
            except Exception as exc:  # the SDK raises many kinds; each says why
                failure = _reason(exc)
            if failure is None:
                try:
                    yield tools
                except (anyio.get_cancelled_exc_class(), KeyboardInterrupt):
                    # Interrupted: the SDK's polite stop (stdin closed, then a 2 s grace)
                    # would hold the exit while a server is busy; end them now instead.
                    _terminate(started)
                    raise
    except Exception as exc:
        if failure is None:
            raise _single(exc) from None
        # Stopping a server that failed to start may fail too: the first reason is the one.
    if failure is not None:
        raise ConfigError(failure)


async def _start_all(
    stack: AsyncExitStack,
    servers: Mapping[str, McpServerConfig],
    workspace: Path,
    log_dir: Path | None,
    started: list[_Server],
) -> list[McpTool]:
    tools: list[McpTool] = []
    for name, config in servers.items():
        server = _Server(name, config)
        started.append(server)
        errlog = _open_log(stack, log_dir, name)
        try:
            listing = await _connect(stack, server, workspace, errlog)
        except TimeoutError:
            raise ConfigError(_failure(server, "no answer in time", log_dir)) from None
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(_failure(server, _reason(exc), log_dir)) from None
        for remote in listing:
            tools.append(
                McpTool(
                    name=mcp_tool_name(name, remote.name),
                    description=remote.description or remote.title or remote.name,
                    input_schema=dict(remote.input_schema) or {"type": "object", "properties": {}},
                    server=server,
                    remote_name=remote.name,
                    read_only=bool(remote.annotations and remote.annotations.read_only_hint),
                    needs_approval=not config.trusted,
                )
            )
    return tools


def _open_log(stack: AsyncExitStack, log_dir: Path | None, name: str) -> TextIO | None:
    if log_dir is None:
        return None
    log_dir.mkdir(parents=True, exist_ok=True)
    return stack.enter_context((log_dir / f"{name}.log").open("a", encoding="utf-8"))


async def _connect(
    stack: AsyncExitStack, server: _Server, workspace: Path, errlog: TextIO | None
) -> list[Any]:
    from mcp import ClientSession, StdioServerParameters, stdio_client
    from mcp.client.streamable_http import streamable_http_client

    config = server.config
    if config.url is not None:
        streams = await stack.enter_async_context(streamable_http_client(config.url))
    else:
        assert config.command is not None
        if shutil.which(config.command, path=_search_path(config)) is None:
            raise ConfigError(
                _failure(server, f"command {config.command!r} not found", None)
            ) from None
        argv = supervised_argv([config.command, *config.args])
        server.argv = argv
        params = StdioServerParameters(
            command=argv[0], args=argv[1:], env=dict(config.env) or None, cwd=workspace
        )
        if errlog is None:
            streams = await stack.enter_async_context(stdio_client(params))
        else:
            streams = await stack.enter_async_context(stdio_client(params, errlog=errlog))
    session = await stack.enter_async_context(ClientSession(streams[0], streams[1]))
    server.session = session
    listed: list[Any] = []
    # Only plain awaits under the deadline: the transports' task groups were entered above.
    with anyio.fail_after(STARTUP_TIMEOUT_S):
        await session.initialize()
        cursor: str | None = None
        while True:
            if cursor is None:
                page = await session.list_tools()
            else:
                from mcp.types import PaginatedRequestParams

                page = await session.list_tools(params=PaginatedRequestParams(cursor=cursor))
            listed.extend(page.tools)
            cursor = page.next_cursor
            if not cursor:
                return listed


def _terminate(servers: list[_Server]) -> None:
    """SIGTERM the supervisors of these stdio servers: each ends its server's whole group.

    The SDK keeps the process to itself; its supervisor is found among this process's
    children by its command line (Linux /proc; elsewhere the SDK's own stop applies).
    """
    import os
    import signal

    wanted = {"\0".join(s.argv) + "\0" for s in servers if s.argv is not None}
    if not wanted or not os.path.isdir("/proc"):
        return
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            if int(stat[stat.rindex(")") + 2 :].split()[1]) != me:
                continue
            if Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace") in wanted:
                os.kill(int(entry), signal.SIGTERM)
        except (OSError, ValueError):
            continue  # gone meanwhile, or not ours to signal


def _search_path(config: McpServerConfig) -> str | None:
    import os

    return config.env.get("PATH") or os.environ.get("PATH")


def _inner(exc: BaseException) -> tuple[BaseException, ...]:
    """The exceptions inside a group (none for a plain exception)."""
    return cast("tuple[BaseException, ...]", getattr(exc, "exceptions", ()))


def _single(exc: Exception) -> Exception:
    """The one error inside the SDK's task groups, so callers never see a group."""
    found: Exception = exc
    inner = _inner(found)
    while len(inner) == 1 and isinstance(inner[0], Exception):
        found = inner[0]
        inner = _inner(found)
    return found


def _reason(exc: BaseException) -> str:
    inner = _inner(exc)
    if inner:
        return _reason(inner[0])
    message: str = str(exc)
    return message or type(exc).__name__


def _failure(server: _Server, why: str, log_dir: Path | None) -> str:
    where = f" (from {server.config.source})" if server.config.source else ""
    log = f"; its stderr is in {log_dir / (server.name + '.log')}" if log_dir else ""
    return f"MCP server {server.name}{where} did not start: {why}{log}"
