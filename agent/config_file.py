"""Config files: `.tidemark/config.toml` in the workspace and a user-level `config.toml`.

Both hold the same keys: the `Settings` fields (thresholds, window, approvals, ...), the
provider and model, extra `--tools` modules and `[mcp_servers.NAME]` tables. A project's
`.mcp.json` (the `mcpServers` format other agents read) adds MCP servers too. Precedence:
the command line, then the workspace file, then `.mcp.json`, then the user file. The user
file lives in the platform's config dir (``TIDEMARK_USER_CONFIG`` names another file).

A wrong key or value is a `ConfigError` naming the file, the line and the key. How flags
are defined is the CLI's business: this module only reads, checks and merges files.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from tidemark.config import Settings
from tidemark.errors import ConfigError

__all__ = [
    "USER_CONFIG_ENV",
    "FileConfig",
    "McpServerConfig",
    "load_config",
    "load_user_config",
    "parse_mcp_flag",
    "user_config_path",
    "workspace_config_path",
]

USER_CONFIG_ENV = "TIDEMARK_USER_CONFIG"

# Settings a file may not set: the workspace is where the file is.
_NOT_IN_FILES = {"workspace"}

_SERVER_NAME = re.compile(r"^[A-Za-z0-9_-]{1,40}$")


def user_config_path() -> Path:
    override = os.environ.get(USER_CONFIG_ENV)
    if override:
        return Path(override).expanduser()
    return Path(platformdirs.user_config_dir("tidemark")) / "config.toml"


def workspace_config_path(workspace: Path) -> Path:
    return workspace / ".tidemark" / "config.toml"


class McpServerConfig(BaseModel):
    """One MCP server: a stdio command (with args and env) or a streamable-HTTP url."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    command: str | None = None
    args: list[str] = Field(default_factory=list[str])
    env: dict[str, str] = Field(default_factory=dict[str, str])
    url: str | None = None
    trusted: bool = False
    # Where it was declared, for `tidemark tools` and error messages (not a file key).
    source: str = Field(default="", exclude=True)

    @model_validator(mode="after")
    def _one_transport(self) -> McpServerConfig:
        if (self.command is None) == (self.url is None):
            raise ValueError("give either command (a stdio server) or url (streamable HTTP)")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {self.url!r}")
        return self

    def describe(self) -> str:
        if self.url is not None:
            return self.url
        return " ".join([cast(str, self.command), *self.args])


def _settings_fields() -> dict[str, Any]:
    """The Settings fields as optional file keys, with the same types and bounds."""
    fields: dict[str, Any] = {}
    for name, info in Settings.model_fields.items():
        if name in _NOT_IN_FILES:
            continue
        annotation = cast(Any, info.annotation)
        if info.metadata:
            annotation = Annotated[annotation, *info.metadata]
        fields[name] = (annotation, None)  # defaults are not validated: None means unset
    return fields


class _FileBase(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    provider: Literal["anthropic", "local"] | None = None
    model: str | None = None
    tools: list[str] = Field(default_factory=list[str])
    mcp_servers: dict[str, McpServerConfig] = Field(default_factory=dict[str, McpServerConfig])


_FileModel = create_model("_FileModel", __base__=_FileBase, **_settings_fields())

SETTING_KEYS = sorted(name for name in Settings.model_fields if name not in _NOT_IN_FILES)
_TOP_KEYS = sorted([*SETTING_KEYS, "provider", "model", "tools", "mcp_servers"])


@dataclass
class FileConfig:
    """What the config files say, merged (a later file wins per key)."""

    settings: dict[str, Any] = field(default_factory=dict[str, Any])
    provider: Literal["anthropic", "local"] | None = None
    model: str | None = None
    tools: list[str] = field(default_factory=list[str])
    mcp_servers: dict[str, McpServerConfig] = field(default_factory=dict[str, McpServerConfig])
    files: list[Path] = field(default_factory=list[Path])

    def merge(self, other: FileConfig) -> FileConfig:
        """`other` wins where both set a key; tool modules add up; servers merge by name."""
        tools = [*self.tools, *(t for t in other.tools if t not in self.tools)]
        return FileConfig(
            settings={**self.settings, **other.settings},
            provider=other.provider or self.provider,
            model=other.model or self.model,
            tools=tools,
            mcp_servers={**self.mcp_servers, **other.mcp_servers},
            files=[*self.files, *other.files],
        )


def load_config(workspace: Path, *, user: bool = True) -> FileConfig:
    """The user file, the project's `.mcp.json` and the workspace file, merged.

    ``user=False`` leaves the user file out (`tidemark batch` reads it once, where the
    command runs, and each task's workspace files where the task runs).
    """
    merged = load_user_config() if user else FileConfig()
    mcp_json = workspace / ".mcp.json"
    if mcp_json.is_file():
        merged = merged.merge(_read_mcp_json(mcp_json))
    local = workspace_config_path(workspace)
    if local.is_file():
        merged = merged.merge(_read_toml(local))
    return merged


def load_user_config() -> FileConfig:
    """The user file alone (empty when there is none)."""
    path = user_config_path()
    return _read_toml(path) if path.is_file() else FileConfig()


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"{path}: cannot read it: {reason}") from None


def _read_toml(path: Path) -> FileConfig:
    text = _read_text(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = re.search(r"line (\d+)", str(exc))
        where = f"{path}:{line.group(1)}" if line else str(path)
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    return _validate(path, text, data)


def _validate(path: Path, text: str, data: dict[str, Any]) -> FileConfig:
    try:
        parsed = _FileModel.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(path, text, exc)) from None
    values = parsed.model_dump(exclude_unset=True)
    settings = {k: values[k] for k in SETTING_KEYS if k in values}
    servers: dict[str, McpServerConfig] = {}
    for name, server in parsed.mcp_servers.items():
        if not _SERVER_NAME.match(name):
            line = _line_of(text, ("mcp_servers", name))
            raise ConfigError(
                f"{path}:{line}: mcp_servers.{name}: a server name may hold only letters, "
                "digits, _ and - (it becomes part of the tool names)"
            )
        servers[name] = server.model_copy(update={"source": str(path)})
    return FileConfig(
        settings=settings,
        provider=cast(Any, parsed.provider),
        model=cast(Any, parsed.model),
        tools=[_anchor_tool_path(spec, path) for spec in parsed.tools],
        mcp_servers=servers,
        files=[path],
    )


def _anchor_tool_path(spec: str, config: Path) -> str:
    """A `path/file.py:ATTR` in a file is relative to the folder the file configures."""
    module, sep, attribute = spec.rpartition(":")
    if not sep or not (module.endswith(".py") or "/" in module) or Path(module).is_absolute():
        return spec
    base = config.parent.parent if config.parent.name == ".tidemark" else config.parent
    return f"{base / module}:{attribute}"


def _describe(path: Path, text: str, exc: ValidationError) -> str:
    error = exc.errors()[0]
    loc = tuple(str(part) for part in error["loc"])
    key = ".".join(loc) if loc else "(file)"
    line = _line_of(text, loc)
    where = f"{path}:{line}" if line else str(path)
    if error["type"] == "extra_forbidden":
        if len(loc) == 1:
            close = [k for k in _TOP_KEYS if k.replace("_", "") == loc[0].replace("-", "")]
            hint = (
                f"; did you mean {close[0]}?" if close else f"; known keys: {', '.join(_TOP_KEYS)}"
            )
        else:
            hint = "; a server takes command, args, env, url, trusted"
        return f"{where}: unknown key {key}{hint}"
    message = str(error["msg"]).removeprefix("Value error, ")
    given = error.get("input")
    if error["type"] != "missing" and not isinstance(given, dict):
        message += f" (got {given!r})"
    return f"{where}: {key}: {message}"


def _line_of(text: str, loc: tuple[str, ...]) -> int | None:
    """The line where the key at `loc` is written (TOML tables and dotted keys), if found."""
    if not loc:
        return None
    table: tuple[str, ...] = ()
    best: int | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        header = re.match(r"^\[\[?\s*([^\]]+?)\s*\]\]?$", line)
        if header:
            table = tuple(_split_key(header.group(1)))
            if table == loc:
                best = number
            continue
        assignment = re.match(r"^([A-Za-z0-9_.\"' -]+?)\s*=", line)
        if not assignment:
            continue
        full = (*table, *_split_key(assignment.group(1)))
        if full == loc[: len(full)] and (best is None or full == loc):
            best = number
            if full == loc:
                return number
    return best


def _split_key(key: str) -> list[str]:
    return [part.strip().strip("\"'") for part in key.split(".")]


def _read_mcp_json(path: Path) -> FileConfig:
    text = _read_text(path)
    try:
        data: object = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    servers_raw = cast(dict[str, Any], data).get("mcpServers") if isinstance(data, dict) else None
    if not isinstance(servers_raw, dict):
        raise ConfigError(f'{path}: expected an object with "mcpServers": {{NAME: {{...}}}}')
    servers: dict[str, McpServerConfig] = {}
    for name, raw in cast(dict[str, Any], servers_raw).items():
        found = re.search(rf'"{re.escape(name)}"\s*:', text)
        where = f"{path}:{text.count(chr(10), 0, found.start()) + 1}" if found else str(path)
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: mcpServers.{name}: expected an object")
        entry = dict(cast(dict[str, Any], raw))
        kind = entry.pop("type", None)  # "stdio", "http" or "streamable-http"
        if kind not in (None, "stdio", "http", "streamable-http", "streamableHttp"):
            raise ConfigError(
                f"{where}: mcpServers.{name}.type: {kind!r} is not supported "
                "(stdio or http: a streamable-HTTP url)"
            )
        if not entry.get("headers", True):
            del entry["headers"]  # an empty headers object says nothing
        if not _SERVER_NAME.match(name):
            raise ConfigError(
                f"{where}: mcpServers.{name}: a server name may hold only letters, digits, _ and -"
            )
        try:
            server = McpServerConfig.model_validate(entry)
        except ValidationError as exc:
            error = exc.errors()[0]
            key = ".".join(["mcpServers", name, *(str(p) for p in error["loc"])])
            message = str(error["msg"]).removeprefix("Value error, ")
            raise ConfigError(f"{where}: {key}: {message}") from None
        servers[name] = server.model_copy(update={"source": str(path)})
    return FileConfig(mcp_servers=servers, files=[path])


def parse_mcp_flag(spec: str) -> tuple[str, McpServerConfig]:
    """``--mcp NAME=COMMAND [ARGS...]`` (a stdio server) or ``--mcp NAME=URL``."""
    import shlex

    name, sep, target = spec.partition("=")
    name = name.strip()
    if not sep or not _SERVER_NAME.match(name) or not target.strip():
        raise ConfigError(
            f"--mcp {spec!r}: expected NAME=COMMAND [ARGS...] or NAME=URL "
            "(NAME: letters, digits, _ and -)"
        )
    target = target.strip()
    if target.startswith(("http://", "https://")):
        return name, McpServerConfig(url=target, source="--mcp")
    try:
        parts = shlex.split(target)
    except ValueError as exc:
        raise ConfigError(f"--mcp {spec!r}: {exc}") from None
    return name, McpServerConfig(command=parts[0], args=parts[1:], source="--mcp")
