"""The Messages API's request rules, answered with the error texts the real API sends.

Texts for tool pairing, tools, prompt length and cache breakpoints are the ones users have
reported; texts for plain schema errors imitate the API's pydantic-style messages.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Any

from .replies import signature_for
from .tokens import count_breakpoints

_TOOL_USE_ID = re.compile(r"^[a-zA-Z0-9_-]+$")
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
_USER_BLOCKS = {"text", "image", "document", "search_result", "tool_result"}
_ASSISTANT_BLOCKS = {"text", "tool_use", "thinking", "redacted_thinking", "server_tool_use"}
_TOOL_RESULT_BLOCKS = {"text", "image", "document", "search_result"}
_THINKING_DOCS = "https://docs.claude.com/en/docs/build-with-claude/extended-thinking"
_EXTRA = "Extra inputs are not permitted"

# The keys each object accepts; any other key is rejected ("Extra inputs are not permitted").
_REQUEST_KEYS = {
    "model", "messages", "max_tokens", "system", "tools", "tool_choice", "metadata",
    "stop_sequences", "stream", "temperature", "top_k", "top_p", "thinking", "service_tier",
    "container", "mcp_servers", "context_management",
}  # fmt: skip
_COUNT_TOKENS_KEYS = {
    "model", "messages", "system", "tools", "tool_choice", "thinking", "mcp_servers",
    "context_management",
}  # fmt: skip
_MESSAGE_KEYS = {"role", "content"}
_BLOCK_KEYS: dict[str, set[str]] = {
    "text": {"type", "text", "cache_control", "citations"},
    "image": {"type", "source", "cache_control"},
    "document": {"type", "source", "title", "context", "citations", "cache_control"},
    "search_result": {"type", "source", "title", "content", "citations", "cache_control"},
    "tool_use": {"type", "id", "name", "input", "cache_control"},
    "tool_result": {"type", "tool_use_id", "content", "is_error", "cache_control"},
    # Thinking blocks cannot carry cache_control.
    "thinking": {"type", "thinking", "signature"},
    "redacted_thinking": {"type", "data"},
}
_CUSTOM_TOOL_KEYS = {"type", "name", "description", "input_schema", "cache_control"}
_CACHE_CONTROL_KEYS = {"type", "ttl"}
_TOOL_CHOICE_KEYS = {
    "auto": {"type", "disable_parallel_tool_use"},
    "any": {"type", "disable_parallel_tool_use"},
    "tool": {"type", "name", "disable_parallel_tool_use"},
    "none": {"type"},
}
# The most output tokens each model family accepts (by model-name prefix); other names: 128k.
_MAX_OUTPUT_TOKENS = (
    ("claude-opus-4-1", 32_000),
    ("claude-opus-4-0", 32_000),
    ("claude-opus-4-2", 32_000),
    ("claude-opus-4", 64_000),
    ("claude-sonnet-4", 64_000),
    ("claude-haiku-4", 64_000),
    ("claude-3-7-sonnet", 64_000),
    ("claude-3-5-haiku", 8_192),
    ("claude-3-5-sonnet", 8_192),
    ("claude-3-haiku", 4_096),
)


class _Invalid(Exception):
    pass


def validate_request(body: Any, *, count_only: bool = False) -> str | None:
    """The error message the API would answer this request body with, or None if valid.

    `count_only` is for /v1/messages/count_tokens, which takes no `max_tokens`.
    """
    try:
        _check_request(body, count_only=count_only)
    except _Invalid as invalid:
        return str(invalid)
    return None


@dataclass
class _Turn:
    """Consecutive messages of one role, merged as the API merges them."""

    role: str
    blocks: list[tuple[int, int, dict[str, Any]]] = field(default_factory=list)


def _check_extra(where: str, obj: dict[str, Any], allowed: set[str]) -> None:
    extra = [key for key in obj if key not in allowed]
    if extra:
        raise _Invalid(f"{where}{'.' if where else ''}{extra[0]}: {_EXTRA}")


def _check_request(body: Any, *, count_only: bool) -> None:
    if not isinstance(body, dict):
        raise _Invalid("body: Input should be a valid dictionary")
    _check_extra("", body, _COUNT_TOKENS_KEYS if count_only else _REQUEST_KEYS)
    if "stream" in body and not isinstance(body["stream"], bool):
        raise _Invalid("stream: Input should be a valid boolean")
    _check_model_and_max_tokens(body, count_only=count_only)
    messages = body.get("messages")
    if messages is None:
        raise _Invalid("messages: Field required")
    if not isinstance(messages, list):
        raise _Invalid("messages: Input should be a valid list")
    if not messages:
        raise _Invalid("messages: at least one message is required")
    _check_tools(body.get("tools"))
    _check_system(body.get("system"))
    thinking = _thinking_enabled(body, count_only=count_only)
    _check_tool_choice(body, thinking=thinking)

    turns: list[_Turn] = []
    for i, message in enumerate(messages):
        role, blocks = _check_message(i, message, is_last=i == len(messages) - 1)
        if not turns or turns[-1].role != role:
            turns.append(_Turn(role))
        turns[-1].blocks += [(i, j, block) for j, block in enumerate(blocks)]

    breakpoints = count_breakpoints(body)
    if breakpoints > 4:
        raise _Invalid(
            f"A maximum of 4 blocks with cache_control may be provided. Found {breakpoints}."
        )
    _check_tool_use_ids(turns, tools_defined=bool(body.get("tools")))
    if turns[0].role != "user":
        raise _Invalid('messages: first message must use the "user" role')
    _check_tool_pairing(turns)
    if thinking:
        _check_thinking_kept(turns)
    _check_final_assistant(messages[-1])


def _check_model_and_max_tokens(body: dict[str, Any], *, count_only: bool) -> None:
    model = body.get("model")
    if model is None:
        raise _Invalid("model: Field required")
    if not isinstance(model, str) or not model:
        raise _Invalid("model: Input should be a valid string")
    if count_only:
        return
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise _Invalid("max_tokens: Field required")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
        raise _Invalid("max_tokens: Input should be a valid integer")
    if max_tokens < 1:
        raise _Invalid("max_tokens: Input should be greater than or equal to 1")
    most = next((n for prefix, n in _MAX_OUTPUT_TOKENS if model.startswith(prefix)), 128_000)
    if max_tokens > most:
        raise _Invalid(
            f"max_tokens: {max_tokens} > {most}, which is the maximum allowed number of output "
            f"tokens for {model}"
        )


def _check_tool_choice(body: dict[str, Any], *, thinking: bool) -> None:
    choice = body.get("tool_choice")
    if choice is None:
        return
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind not in _TOOL_CHOICE_KEYS:
        raise _Invalid(
            f"tool_choice: Input tag '{kind}' found using 'type' does not match any of the "
            "expected tags: 'any', 'auto', 'none', 'tool'"
        )
    assert isinstance(choice, dict)
    _check_extra(f"tool_choice.{kind}", choice, _TOOL_CHOICE_KEYS[kind])
    flag = choice.get("disable_parallel_tool_use")
    if flag is not None and not isinstance(flag, bool):
        raise _Invalid(
            f"tool_choice.{kind}.disable_parallel_tool_use: Input should be a valid boolean"
        )
    if kind == "tool":
        name = choice.get("name")
        if not isinstance(name, str):
            raise _Invalid("tool_choice.tool.name: Field required")
        names = {t.get("name") for t in body.get("tools") or []}
        if name not in names:
            raise _Invalid(f"Tool '{name}' not found in provided tools")
    if kind in ("any", "tool") and not body.get("tools"):
        raise _Invalid("tool_choice may only be specified while providing tools.")
    if thinking and kind in ("any", "tool"):
        raise _Invalid("Thinking may not be enabled when tool_choice forces tool use.")


def _check_cache_control(where: str, block: dict[str, Any]) -> None:
    control = block.get("cache_control")
    if control is None:
        return
    if not isinstance(control, dict) or control.get("type") != "ephemeral":
        raise _Invalid(f"{where}.cache_control.type: Input should be 'ephemeral'")
    _check_extra(f"{where}.cache_control.ephemeral", control, _CACHE_CONTROL_KEYS)
    if control.get("ttl", "5m") not in ("5m", "1h"):
        raise _Invalid(f"{where}.cache_control.ephemeral.ttl: Input should be '5m' or '1h'")


def _check_tools(tools: Any) -> None:
    if tools is None:
        return
    if not isinstance(tools, list):
        raise _Invalid("tools: Input should be a valid list")
    names: set[str] = set()
    for k, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise _Invalid(f"tools.{k}: Input should be a valid dictionary")
        name = tool.get("name")
        if tool.get("type") in (None, "custom"):
            if not isinstance(name, str) or not _TOOL_NAME.match(name):
                raise _Invalid(
                    f"tools.{k}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'"
                )
            schema = tool.get("input_schema")
            if not isinstance(schema, dict):
                raise _Invalid(f"tools.{k}.custom.input_schema: Field required")
            if schema.get("type") != "object":
                raise _Invalid(f"tools.{k}.custom.input_schema.type: Input should be 'object'")
            _check_extra(f"tools.{k}.custom", tool, _CUSTOM_TOOL_KEYS)
            description = tool.get("description")
            if description is not None and not isinstance(description, str):
                raise _Invalid(f"tools.{k}.custom.description: Input should be a valid string")
        _check_cache_control(f"tools.{k}", tool)
        if name in names:
            raise _Invalid("tools: Tool names must be unique.")
        names.add(str(name))


def _check_system(system: Any) -> None:
    if system is None or isinstance(system, str):
        return
    if not isinstance(system, list):
        raise _Invalid("system: Input should be a valid list")
    for k, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise _Invalid(f"system.{k}.type: Input should be 'text'")
        _check_extra(f"system.{k}", block, _BLOCK_KEYS["text"])
        _check_text(f"system.{k}", block, where="system")
        _check_cache_control(f"system.{k}", block)


def _thinking_enabled(body: dict[str, Any], *, count_only: bool) -> bool:
    thinking = body.get("thinking")
    if thinking is None:
        return False
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if kind == "disabled":
        return False
    if kind == "adaptive":
        return True
    if kind != "enabled":
        raise _Invalid(
            f"thinking: Input tag '{kind}' found using 'type' does not match any of the "
            "expected tags: 'adaptive', 'disabled', 'enabled'"
        )
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int) or budget < 1024:
        raise _Invalid(
            "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
        )
    if not count_only and body["max_tokens"] <= budget:
        raise _Invalid(
            "`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our "
            f"documentation at {_THINKING_DOCS}#max-tokens-and-context-window-size"
        )
    return True


def _check_message(i: int, message: Any, *, is_last: bool) -> tuple[str, list[dict[str, Any]]]:
    if not isinstance(message, dict):
        raise _Invalid(f"messages.{i}: Input should be a valid dictionary")
    _check_extra(f"messages.{i}", message, _MESSAGE_KEYS)
    role = message.get("role")
    if role not in ("user", "assistant"):
        raise _Invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
    if "content" not in message:
        raise _Invalid(f"messages.{i}.content: Field required")
    content = message["content"]
    if isinstance(content, str):
        blocks = [{"type": "text", "text": content}] if content else []
    elif isinstance(content, list):
        blocks = content
    else:
        raise _Invalid(f"messages.{i}.content: Input should be a valid list")
    if not blocks and not (is_last and role == "assistant"):
        raise _Invalid(
            f"messages.{i}: all messages must have non-empty content except for the optional "
            "final assistant message"
        )
    for j, block in enumerate(blocks):
        _check_block(f"messages.{i}.content.{j}", block, role=role)
    return role, blocks


def _check_block(where: str, block: Any, *, role: str) -> None:
    if not isinstance(block, dict):
        raise _Invalid(f"{where}: Input should be a valid dictionary")
    kind = block.get("type")
    allowed = _USER_BLOCKS if role == "user" else _ASSISTANT_BLOCKS
    if kind not in allowed and not (role == "assistant" and str(kind).endswith("_tool_result")):
        expected = ", ".join(f"'{t}'" for t in sorted(allowed))
        raise _Invalid(
            f"{where}.type: Input tag '{kind}' found using 'type' does not match any of the "
            f"expected tags for `{role}` messages: {expected}"
        )
    if kind in _BLOCK_KEYS:
        _check_extra(f"{where}.{kind}", block, _BLOCK_KEYS[kind])
    _check_cache_control(where, block)
    if kind == "text":
        _check_text(where, block, where="messages")
    elif kind == "tool_use":
        _check_tool_use(where, block)
    elif kind == "tool_result":
        _check_tool_result(where, block)
    elif kind == "thinking":
        _check_thinking_block(where, block)
    elif kind == "redacted_thinking" and not isinstance(block.get("data"), str):
        raise _Invalid(f"{where}.data: Field required")
    elif kind == "image":
        _check_image(f"{where}.image", block)
    elif kind == "document" and not isinstance(block.get("source"), dict):
        raise _Invalid(f"{where}.source: Field required")


def _check_text(path: str, block: dict[str, Any], *, where: str) -> None:
    value = block.get("text")
    if not isinstance(value, str):
        raise _Invalid(f"{path}.text: Input should be a valid string")
    if not value:
        raise _Invalid(f"{where}: text content blocks must be non-empty")
    if not value.strip():
        raise _Invalid(f"{where}: text content blocks must contain non-whitespace text")


def _check_tool_use(where: str, block: dict[str, Any]) -> None:
    if not isinstance(block.get("id"), str) or not _TOOL_USE_ID.match(block["id"]):
        raise _Invalid(f"{where}.id: String should match pattern '^[a-zA-Z0-9_-]+$'")
    if not isinstance(block.get("name"), str) or not block["name"]:
        raise _Invalid(f"{where}.name: Field required")
    if not isinstance(block.get("input"), dict):
        raise _Invalid(f"{where}.input: Input should be a valid dictionary")


def _check_tool_result(where: str, block: dict[str, Any]) -> None:
    if not isinstance(block.get("tool_use_id"), str) or not _TOOL_USE_ID.match(
        block["tool_use_id"]
    ):
        raise _Invalid(f"{where}.tool_use_id: String should match pattern '^[a-zA-Z0-9_-]+$'")
    if "is_error" in block and not isinstance(block["is_error"], bool):
        raise _Invalid(f"{where}.is_error: Input should be a valid boolean")
    content = block.get("content")
    if content is None or isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _Invalid(f"{where}.content: Input should be a valid list")
    for k, inner in enumerate(content):
        path = f"{where}.content.{k}"
        if not isinstance(inner, dict) or inner.get("type") not in _TOOL_RESULT_BLOCKS:
            kind = inner.get("type") if isinstance(inner, dict) else None
            raise _Invalid(
                f"{path}.type: Input tag '{kind}' found using 'type' does not match any of the "
                "expected tags: 'document', 'image', 'search_result', 'text'"
            )
        _check_extra(f"{path}.{inner['type']}", inner, _BLOCK_KEYS[inner["type"]])
        _check_cache_control(path, inner)
        if inner["type"] == "text":
            _check_text(path, inner, where="messages")
        elif inner["type"] == "image":
            _check_image(f"{path}.image", inner)


# The image types the API takes, and how each file begins.
_IMAGE_MAGIC = {
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/gif": (b"GIF87a", b"GIF89a"),
    "image/webp": (b"RIFF",),
}
_IMAGE_MAX_BYTES = 5 * 1024 * 1024


def _check_image(where: str, block: dict[str, Any]) -> None:
    """An image block's source, as the API checks it: base64 (a known type whose data is
    that type) or a URL."""
    source = block.get("source")
    if not isinstance(source, dict):
        raise _Invalid(f"{where}.source: Field required")
    kind = source.get("type")
    if kind == "url":
        _check_extra(f"{where}.source.url", source, {"type", "url"})
        if not isinstance(source.get("url"), str):
            raise _Invalid(f"{where}.source.url.url: Field required")
        return
    if kind != "base64":
        raise _Invalid(
            f"{where}.source.type: Input tag '{kind}' found using 'type' does not match any of "
            "the expected tags: 'base64', 'url'"
        )
    _check_extra(f"{where}.source.base64", source, {"type", "media_type", "data"})
    media_type = source.get("media_type")
    if media_type not in _IMAGE_MAGIC:
        raise _Invalid(
            f"{where}.source.base64.media_type: Input should be 'image/jpeg', 'image/png', "
            "'image/gif' or 'image/webp'"
        )
    data = source.get("data")
    if not isinstance(data, str):
        raise _Invalid(f"{where}.source.base64.data: Field required")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise _Invalid(f"{where}.source.base64.data: invalid base64 data") from None
    if len(raw) > _IMAGE_MAX_BYTES:
        raise _Invalid(f"{where}.source.base64: image exceeds 5 MB maximum")
    if not raw.startswith(_IMAGE_MAGIC[media_type]):
        raise _Invalid(f"{where}.source.base64: Image does not match the provided media type")


def _check_thinking_block(where: str, block: dict[str, Any]) -> None:
    if not isinstance(block.get("thinking"), str):
        raise _Invalid(f"{where}.thinking: Field required")
    if not isinstance(block.get("signature"), str):
        raise _Invalid(f"{where}.signature: Field required")
    if block["signature"] != signature_for(block["thinking"]):
        raise _Invalid(f"{where}: Invalid `signature` in `thinking` block")


def _check_tool_use_ids(turns: list[_Turn], *, tools_defined: bool) -> None:
    seen: set[str] = set()
    for turn in turns:
        for i, j, block in turn.blocks:
            kind = block.get("type")
            if kind in ("tool_use", "tool_result") and not tools_defined:
                raise _Invalid(
                    "Requests which include `tool_use` or `tool_result` blocks must define tools."
                )
            if kind == "tool_use":
                if block["id"] in seen:
                    raise _Invalid(f"messages.{i}.content.{j}: `tool_use` ids must be unique")
                seen.add(block["id"])


def _check_tool_pairing(turns: list[_Turn]) -> None:
    """Every tool_use is answered at the start of the next user turn, and nothing else is."""
    pending: dict[str, int] = {}  # tool_use id -> index of the message holding it
    for turn in turns:
        if turn.role == "assistant":
            pending = {b["id"]: i for i, _, b in turn.blocks if b.get("type") == "tool_use"}
            continue
        answered: set[str] = set()
        for i, j, block in turn.blocks:
            if block.get("type") != "tool_result":
                continue
            tool_use_id = block["tool_use_id"]
            if tool_use_id not in pending:
                raise _Invalid(
                    f"messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` "
                    f"blocks: {tool_use_id}. Each `tool_result` block must have a corresponding "
                    "`tool_use` block in the previous message."
                )
            if tool_use_id in answered:
                raise _Invalid(
                    f"messages.{i}.content.{j}: each tool_use must have a single result. Found "
                    f"multiple `tool_result` blocks with id: {tool_use_id}"
                )
            answered.add(tool_use_id)
        _raise_if_unanswered(pending, answered)
        leading = 0
        while leading < len(turn.blocks) and turn.blocks[leading][2].get("type") == "tool_result":
            leading += 1
        if leading < len(pending):
            raise _Invalid(
                f"messages.{turn.blocks[0][0]}: Did not find {len(pending)} tool_result block(s) "
                "at the beginning of this message. Messages following tool_use blocks must begin "
                "with a matching number of tool_result blocks."
            )
        pending = {}
    _raise_if_unanswered(pending, set())


def _raise_if_unanswered(pending: dict[str, int], answered: set[str]) -> None:
    missing = [tool_use_id for tool_use_id in pending if tool_use_id not in answered]
    if missing:
        raise _Invalid(
            f"messages.{pending[missing[0]]}: `tool_use` ids were found without `tool_result` "
            f"blocks immediately after: {', '.join(missing)}. Each `tool_use` block must have a "
            "corresponding `tool_result` block in the next message."
        )


def _check_thinking_kept(turns: list[_Turn]) -> None:
    """While a tool loop is in progress, its assistant turn must start with its thinking."""
    last = turns[-1]
    if last.role != "user" or last.blocks[0][2].get("type") != "tool_result":
        return
    start = len(turns) - 1
    while start > 0 and not (
        turns[start - 1].role == "user"
        and all(b.get("type") != "tool_result" for _, _, b in turns[start - 1].blocks)
    ):
        start -= 1
    first = next((t for t in turns[start:] if t.role == "assistant"), None)
    if first is None:
        return
    i, j, block = first.blocks[0]
    if block.get("type") not in ("thinking", "redacted_thinking"):
        raise _Invalid(
            f"messages.{i}.content.{j}.type: Expected `thinking` or `redacted_thinking`, but found "
            f"`{block.get('type')}`. When `thinking` is enabled, a final `assistant` message must "
            "start with a thinking block (preceeding the lastmost set of `tool_use` and "
            "`tool_result` blocks). We recommend you include thinking blocks from previous turns. "
            f"To avoid this requirement, disable `thinking`. Please consult our documentation at "
            f"{_THINKING_DOCS}"
        )


def _check_final_assistant(message: dict[str, Any]) -> None:
    if message["role"] != "assistant":
        return
    content = message["content"]
    last = content if isinstance(content, str) else None
    if isinstance(content, list) and content and content[-1].get("type") == "text":
        last = content[-1]["text"]
    if last and last != last.rstrip():
        raise _Invalid("messages: final assistant content cannot end with trailing whitespace")
