"""Qwen2.5 tool-calling prompt format, output grammar and reply parsing for the local model.

Everything here is pure (no model): the transcript is rendered with the chat template
Qwen2.5 was trained on for tools (ChatML, ``<tools>`` in the system turn,
``<tool_call>`` JSON in assistant turns, ``<tool_response>`` in user turns), the reply is
constrained by a GBNF grammar to tool calls matching one tool's schema, and the reply text
is parsed back into content blocks.

Scaffolding for small models (measured with ``python -m benchmarks.eval``): every turn's
reply is exactly one call, and finishing is a call too, of the `answer` action (`ANSWER`),
so a small model can neither ramble nor stop with an empty reply; tool results are trimmed;
and after tool results a short reminder restates the task and says to answer when the
results suffice.
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
    "ANSWER",
    "END_OF_TURN",
    "MAX_TOOL_CALLS",
    "ParsedReply",
    "ReplyKind",
    "essential",
    "first_sentence",
    "parrots",
    "parse_reply",
    "reminder",
    "render_prompt",
    "render_tool_call",
    "repeats_a_call",
    "reply_kind",
    "tool_call_grammar",
    "tool_entry",
    "with_answer",
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
# Tool results are shown up to this many characters (about 800 tokens): a small model
# loses the task in long outputs, and every token costs prefill time on a CPU.
RESULT_CHARS = 3000

# The explicit finish: its text becomes the reply's text, the run's answer.
ANSWER = ToolSpec(
    name="answer",
    description="Finish: give the user the result (the value, file, number, or what you changed).",
    input_schema={
        "type": "object",
        "properties": {"text": {"type": "string", "minLength": 1, "maxLength": 800}},
        "required": ["text"],
    },
)
REMINDER = (
    "Task: {task}\nIf the results above answer the task, or the change is made, call answer "
    "now with the result. Otherwise make the next tool call."
)
NOTHING_CHANGED = "\n(No file has been changed yet.)"
# The tools that change files; a task that asks for a change is not done before one worked.
_CHANGING = frozenset({"edit_file", "write_file"})

_SENTENCE_END = re.compile(r"(?<!\be\.g)(?<!\bi\.e)[.!?](?=\s|$)")
# Schema keys the prompt leaves out: the grammar still enforces what matters, and every
# token of the tool list costs prefill time on each new session.
_HIDDEN_KEYS = frozenset(
    {
        "title",
        "additionalProperties",
        "default",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "minLength",
        "maxLength",
    }
)
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
        if key in _HIDDEN_KEYS and not isinstance(value, dict):
            continue
        if key == "description" and isinstance(value, str):
            slim[key] = first_sentence(value)
        elif key == "properties" and isinstance(value, dict):
            properties = cast(dict[str, Any], value)
            slim[key] = {name: _slim_schema(sub) for name, sub in properties.items()}
        else:
            slim[key] = _slim_schema(value)
    return slim


def essential(spec: ToolSpec) -> ToolSpec:
    """The tool with only its required arguments (or its first, when none is required).

    A small model fills every optional argument it sees, often badly (a read limited to
    the wrong lines, a short timeout); the tools' defaults do better.
    """
    schema = spec.input_schema or {}
    properties = cast(dict[str, Any], schema.get("properties") or {})
    required = [n for n in cast(list[str], schema.get("required") or []) if n in properties]
    keep = required or list(properties)[:1]
    if not properties or len(keep) == len(properties):
        return spec
    slim = {
        **schema,
        "properties": {name: properties[name] for name in keep},
        "required": keep,
    }
    return spec.model_copy(update={"input_schema": slim})


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


def _trim(text: str) -> str:
    if len(text) <= RESULT_CHARS:
        return text
    rest = text[RESULT_CHARS:]
    return (
        text[:RESULT_CHARS]
        + f"\n[... {rest.count(chr(10)) + 1} more lines not shown: read a part with offset/limit"
        " or grep]"
    )


def _render_user(message: Message) -> str:
    parts: list[str] = []
    results = [b for b in message.content if isinstance(b, ToolResultBlock)]
    if results:
        body = "".join(
            "\n<tool_response>\n"
            + ("Error: " if block.is_error else "")
            + _sanitize(_trim(block.content))
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


def render_prompt(
    system: str,
    messages: Iterable[Message],
    tools: Sequence[ToolSpec] = (),
    *,
    note: str | None = None,
) -> str:
    """The whole prompt, ending with the assistant's generation prompt.

    Byte-identical to Qwen2.5's embedded chat template for the same conversation (tool
    results trimmed), so the model sees what it was trained on, and append-only for a
    growing transcript, so llama.cpp reuses the KV cache of the shared prefix. `note` is a
    last user turn for this request only (the reminder); it costs the re-reading of itself.
    """
    out = [_render_system(system, tools)]
    for message in messages:
        out.append(_render_user(message) if message.role == "user" else _render_assistant(message))
    if note:
        out.append(f"{START}user\n{_sanitize(note)}{END_OF_TURN}\n")
    out.append(f"{START}assistant\n")
    return "".join(out)


def with_answer(tools: Sequence[ToolSpec]) -> list[ToolSpec]:
    """The tools as the local model sees them: essential arguments, the `answer` action last."""
    if not tools:
        return []
    return [*(essential(t) for t in tools if t.name != ANSWER.name), ANSWER]


# Calls that change nothing: repeating one with nothing else done since gives the same result.
_LOOKING = frozenset({"read_file", "list_files", "grep"})


def repeats_a_call(call: ToolUseBlock, messages: Sequence[Message]) -> bool:
    """Whether `call` was already made, with only read-only calls since (its result stands).

    Small models, having read what they needed, read it again instead of answering; the
    local model then answers instead (the call is replaced, not run).
    """
    for message in reversed(messages):
        for earlier in reversed(message.tool_uses):
            if earlier.name == call.name and earlier.input == call.input:
                return True
            if earlier.name not in _LOOKING:
                return False
    return False


def parrots(answer: str, messages: Sequence[Message]) -> bool:
    """Whether an answer only repeats the task or the reminder (a small model's fallback)."""
    said = " ".join(answer.lower().split())
    if "call answer now" in said or "make the next tool call" in said:
        return True
    task = next((m.text for m in reversed(messages) if m.is_users_own), "")
    task = " ".join(task.lower().split())
    return len(task) >= 12 and task in said and len(said) < len(task) + 12


def reminder(messages: Sequence[Message]) -> str | None:
    """After tool results: the task again, and when to answer (None elsewhere)."""
    if not messages or not messages[-1].tool_results:
        return None
    task = next((m.text for m in reversed(messages) if m.is_users_own and m.text.strip()), "")
    if not task:
        return None
    if len(task) > 600:
        task = task[:600] + " [...]"
    note = REMINDER.format(task=task.strip())
    changed = {
        result.tool_use_id
        for message in messages
        for result in message.tool_results
        if not result.is_error
    } & {use.id for message in messages for use in message.tool_uses if use.name in _CHANGING}
    return note if changed else note + NOTHING_CHANGED


def tool_call_grammar(tools: Sequence[ToolSpec], max_calls: int = MAX_TOOL_CALLS) -> str:
    """GBNF for the rest of a reply after its opening ``<tool_call>\\n``.

    One call matching one tool's schema, then up to `max_calls` - 1 more, then the end of
    the turn (a finished grammar only admits the end-of-turn token). Needs `llama_cpp` (its
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
    for _ in range(max_calls - 1):
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
        # strict=False: a raw tab or newline inside a string is what the model meant.
        data, _end = json.JSONDecoder(strict=False).raw_decode(raw, start)
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
