"""Qwen2.5 tool-calling prompt format, output grammar and reply parsing for the local model.

Everything here is pure (no model): the transcript is rendered with the chat template
Qwen2.5 was trained on for tools (ChatML, ``<tools>`` in the system turn,
``<tool_call>`` JSON in assistant turns, ``<tool_response>`` in user turns), the reply is
constrained by a GBNF grammar to plain text or tool calls matching one tool's schema, and
the reply text is parsed back into content blocks.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

from tidemark.messages import (
    ContentBlock,
    Message,
    TextBlock,
    ToolResultBlock,
    ToolUseBlock,
)
from tidemark.model import ToolSpec

__all__ = [
    "END_OF_TURN",
    "MAX_TOOL_CALLS",
    "ParsedReply",
    "ReplyKind",
    "first_sentence",
    "parse_reply",
    "render_prompt",
    "render_tool_call",
    "reply_kind",
    "tool_call_grammar",
    "tool_entry",
]

START = "<|im_start|>"
END_OF_TURN = "<|im_end|>"
# Qwen2.5's default system line, used when the request carries no system prompt.
DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
TOOLS_PREAMBLE = (
    "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
TOOLS_POSTAMBLE = (
    "\n</tools>\n\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)
CALL_OPEN = "<tool_call>\n"
CALL_CLOSE = "\n</tool_call>"
# More calls per reply rarely help a small model and make runaway replies longer.
MAX_TOOL_CALLS = 3

_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")
# A call in tags (the trained format; unclosed when cut by max_tokens) or in a JSON fence.
_CALL_RE = re.compile(
    r"<tool_call>\s*(?P<tagged>.*?)\s*(?:</tool_call>|$)"
    r"|```(?:json|tool_call)?[ \t]*\n\s*(?P<fenced>\{.*?\})\s*```",
    re.DOTALL,
)


def first_sentence(text: str) -> str:
    """The first sentence (or first line) of a description: small models do better with less."""
    line = text.strip().split("\n", 1)[0].strip()
    match = _SENTENCE_END.search(line)
    return line[: match.end()] if match else line


def _slim_schema(schema: Any) -> Any:
    """The schema as the prompt shows it: titles dropped, descriptions cut to one sentence."""
    if isinstance(schema, list):
        return [_slim_schema(item) for item in cast(list[Any], schema)]
    if not isinstance(schema, dict):
        return schema
    slim: dict[str, Any] = {}
    for key, value in cast(dict[str, Any], schema).items():
        if key == "title" and isinstance(value, str):
            continue
        if key == "description" and isinstance(value, str):
            slim[key] = first_sentence(value)
        elif key == "properties" and isinstance(value, dict):
            properties = cast(dict[str, Any], value)
            slim[key] = {name: _slim_schema(sub) for name, sub in properties.items()}
        else:
            slim[key] = _slim_schema(value)
    return slim


def tool_entry(spec: ToolSpec) -> dict[str, Any]:
    """One tool as the Qwen2.5 template lists it inside ``<tools>``."""
    parameters = _slim_schema(spec.input_schema or {"type": "object", "properties": {}})
    return {
        "type": "function",
        "function": {
            "name": spec.name,
            "description": first_sentence(spec.description),
            "parameters": parameters,
        },
    }


def _dumps(value: Any) -> str:
    # The separators of Jinja's `tojson`, which the chat template uses.
    return json.dumps(value, ensure_ascii=False)


def _sanitize(text: str) -> str:
    """Keep file contents from forging control tokens (prompts are tokenized with specials)."""
    return text.replace("<|", "<\u200b|")


def render_tool_call(name: str, arguments: dict[str, Any]) -> str:
    return (
        CALL_OPEN + '{"name": "' + name + '", "arguments": ' + _dumps(arguments) + "}" + CALL_CLOSE
    )


def _render_system(system: str, tools: Sequence[ToolSpec]) -> str:
    text = _sanitize(system) if system else DEFAULT_SYSTEM
    if tools:
        text += TOOLS_PREAMBLE
        text += "".join("\n" + _dumps(tool_entry(spec)) for spec in tools)
        text += TOOLS_POSTAMBLE
    return f"{START}system\n{text}{END_OF_TURN}\n"


def _render_user(message: Message) -> str:
    parts: list[str] = []
    results = [b for b in message.content if isinstance(b, ToolResultBlock)]
    if results:
        body = "".join(
            "\n<tool_response>\n"
            + ("Error: " if block.is_error else "")
            + _sanitize(block.content)
            + "\n</tool_response>"
            for block in results
        )
        parts.append(f"{START}user{body}{END_OF_TURN}\n")
    text = message.text
    if text or not results:
        parts.append(f"{START}user\n{_sanitize(text)}{END_OF_TURN}\n")
    return "".join(parts)


def _render_assistant(message: Message) -> str:
    text = message.text
    calls = message.tool_uses
    if not calls:
        return f"{START}assistant\n{_sanitize(text)}{END_OF_TURN}\n"
    out = f"{START}assistant"
    if text:
        out += "\n" + _sanitize(text)
    out += "".join("\n" + render_tool_call(call.name, call.input) for call in calls)
    return out + f"{END_OF_TURN}\n"


def render_prompt(system: str, messages: Iterable[Message], tools: Sequence[ToolSpec] = ()) -> str:
    """The whole prompt, ending with the assistant's generation prompt.

    Byte-identical to Qwen2.5's embedded chat template for the same conversation, so the
    model sees what it was trained on, and append-only for a growing transcript, so
    llama.cpp reuses the KV cache of the shared prefix.
    """
    out = [_render_system(system, tools)]
    for message in messages:
        out.append(_render_user(message) if message.role == "user" else _render_assistant(message))
    out.append(f"{START}assistant\n")
    return "".join(out)


def tool_call_grammar(tools: Sequence[ToolSpec]) -> str:
    """GBNF for the rest of a reply after its opening ``<tool_call>\\n``.

    One call matching one tool's schema, then up to two more, then the end of the turn
    (a finished grammar only admits the end-of-turn token). Needs `llama_cpp` (its
    JSON-schema converter is pure Python).
    """
    # Imported by name: llama_cpp is an optional extra, untyped as far as we use it.
    grammar_module: Any = importlib.import_module("llama_cpp.llama_grammar")
    converter: Any = grammar_module.SchemaConverter(
        prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False
    )
    alternatives: list[dict[str, Any]] = [
        {
            "type": "object",
            "properties": {
                "name": {"const": spec.name},
                "arguments": spec.input_schema or {"type": "object", "properties": {}},
            },
            "required": ["name", "arguments"],
        }
        for spec in tools
    ]
    schema = converter.resolve_refs({"oneOf": alternatives}, "tools")
    converter.visit(schema, "call")
    rules = str(converter.format_grammar())
    more_calls = ""
    for _ in range(MAX_TOOL_CALLS - 1):
        more_calls = f'("\\n<tool_call>\\n" call "\\n</tool_call>" {more_calls})?'
    return f'root ::= call "\\n</tool_call>" {more_calls}\n' + rules + "\n"


ReplyKind = Literal["calls", "text"]
_FENCE_TAGS = ("", "json", "tool_call", "xml")


def reply_kind(head: str) -> ReplyKind | None:
    """Whether a reply that starts with `head` is a tool call or prose (None: not yet known).

    Small models often write a call as bare or fenced JSON instead of ``<tool_call>``;
    such a start is taken as a call, and the call itself is then generated under the
    grammar, so it always parses.
    """
    text = head.lstrip()
    if not text:
        return None
    if text.startswith("<"):
        if text.startswith(CALL_OPEN.strip()):
            return "calls"
        return None if CALL_OPEN.strip().startswith(text) else "text"
    if text.startswith("{"):
        return "calls"
    if not text.startswith("`"):
        return "text"
    if "\n" not in text:
        return None if len(text) < 16 and "```".startswith(text[:3]) else "text"
    fence, rest = text.split("\n", 1)
    if not fence.startswith("```") or fence[3:].strip().lower() not in _FENCE_TAGS:
        return "text"
    rest = rest.lstrip()
    if not rest:
        return None
    return reply_kind(rest) if rest[0] in "{<" else "text"


@dataclass(frozen=True)
class ParsedReply:
    content: list[ContentBlock]
    malformed_calls: int = 0

    @property
    def has_tool_calls(self) -> bool:
        return any(isinstance(b, ToolUseBlock) for b in self.content)


def _parse_call(raw: str, names: set[str]) -> tuple[str, dict[str, Any]] | None:
    # raw_decode takes the first whole object: trailing junk (a stray brace) is ignored.
    start = raw.find("{")
    if start < 0:
        return None
    try:
        data, _end = json.JSONDecoder().raw_decode(raw, start)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    fields = cast(dict[str, Any], data)
    name = fields.get("name")
    arguments = fields.get("arguments", fields.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    if not isinstance(name, str) or name not in names or not isinstance(arguments, dict):
        return None
    return name, cast(dict[str, Any], arguments)


def parse_reply(text: str, tools: Sequence[ToolSpec], new_id: Callable[[], str]) -> ParsedReply:
    """Split a reply into text and tool-use blocks.

    Calls come in ``<tool_call>`` tags (the trained format), or as JSON fenced or bare,
    which small models write when unconstrained. A tagged call that does not parse, or
    names an unknown tool, stays in the text and is counted as malformed, so the model
    sees what it wrote rather than a silently dropped call. A call repeated verbatim in the
    same reply is kept once.
    """
    names = {spec.name for spec in tools}
    content: list[ContentBlock] = []
    kept_text: list[str] = []
    malformed = 0
    position = 0
    for match in _CALL_RE.finditer(text):
        tagged = match.group("tagged")
        call = _parse_call(tagged if tagged is not None else match.group("fenced"), names)
        if call is None:
            malformed += tagged is not None
            continue
        kept_text.append(text[position : match.start()])
        position = match.end()
        if any(
            isinstance(b, ToolUseBlock) and (b.name, b.input) == call for b in content
        ):  # small models repeat a call within one reply; running it twice helps nobody
            continue
        content.append(ToolUseBlock(id=new_id(), name=call[0], input=call[1]))
    kept_text.append(text[position:])
    prose = "".join(kept_text).strip()
    if not content and prose.startswith("{"):
        call = _parse_call(prose, names)
        if call is not None:
            content.append(ToolUseBlock(id=new_id(), name=call[0], input=call[1]))
            prose = ""
    if prose:
        content.insert(0, TextBlock(text=prose))
    return ParsedReply(content=content, malformed_calls=malformed)
