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
from tidemark.prompts import REPOSITORY_HEADING

__all__ = [
    "ANSWER",
    "END_OF_TURN",
    "MAX_TOOL_CALLS",
    "ParsedReply",
    "ReplyKind",
    "asks_for_change",
    "callable_tools",
    "essential",
    "first_sentence",
    "fixed_prefix",
    "has_changed",
    "has_read",
    "is_question",
    "parrots",
    "parse_reply",
    "relative_paths",
    "reminder",
    "render_prompt",
    "render_tool_call",
    "repeats_a_call",
    "reply_kind",
    "task_of",
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
    "Task: {task}\nIf the results above answer the task, call answer now with the value, "
    "name or number. Otherwise make the next tool call."
)
REMINDER_TO_CHANGE = (
    "Task: {task}\nNo file has been changed yet. Make the change now: edit_file with "
    "old_string copied exactly from the file, or write_file."
)
# No example command here: a small model runs an example verbatim.
REMINDER_TO_COUNT = "Task: {task}\nCount with one bash command, then answer with the number."
_CREATES = re.compile(r"\b(?:create|new file|add a file|write a file)\b", re.IGNORECASE)
_HOW_MANY = re.compile(r"\bhow many\b", re.IGNORECASE)
REMINDER_CHANGED = (
    "Task: {task}\nA file was changed. If the task is done, call answer saying what you "
    "changed. Otherwise make the next change."
)
# The tools that change files; a task that asks for a change is not done before one worked.
_CHANGING = frozenset({"edit_file", "write_file"})
_READING = frozenset({"read_file", "grep"})
# A bash command that writes files (redirection, in-place edits, moves): a change too.
_WRITING_COMMAND = re.compile(r">|\bsed\s+-i|\bperl\s+-p?i|\b(?:mv|cp|tee|touch|mkdir|rm|patch)\b")
# A task asks for a change when a sentence or clause starts with one of these verbs
# ("Fix the bug", "In words.py, rename ..."), not when one is only mentioned ("what does
# add(2, 3) return?").
_CHANGE_VERB = re.compile(
    r"(?:^|[.!?;:,]\s+|\b(?:and|then|please|you|to)\s+)"
    r"(?:fix|change|rename|add|create|write|edit|update|remove|delete|replace|implement"
    r"|refactor|insert|append|correct|modify|make)\b",
    re.IGNORECASE,
)
# A question: it asks, and nothing in it asks for a change.
_QUESTION = re.compile(
    r"\?|\b(?:tell me|what|which|where|who|how many|how much|find|show|list|count|read"
    r"|report)\b",
    re.IGNORECASE,
)
# A read-only call's result as the small model sees it: read_file's line numbers are left
# out, so the text it copies into edit_file's old_string is the file's.
_LINE_NUMBER = re.compile(r"^ *\d+\t", re.MULTILINE)

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
    """The tool with only its required arguments (or its first, when none is required),
    and its optional flags.

    A small model fills every optional argument it sees, often badly (a read limited to
    the wrong lines, a short timeout); the tools' defaults do better. A flag is kept: it
    cannot be filled badly, and some tasks need one (edit_file's replace_all, to rename).
    """
    schema = spec.input_schema or {}
    properties = cast(dict[str, Any], schema.get("properties") or {})
    required = [n for n in cast(list[str], schema.get("required") or []) if n in properties]
    keep = required or list(properties)[:1]
    flags = [
        name
        for name, sub in properties.items()
        if name not in keep
        and isinstance(sub, dict)
        and cast(dict[str, Any], sub).get("type") == "boolean"
    ]
    if not properties or len(keep) + len(flags) == len(properties):
        return spec
    slim = {
        **schema,
        "properties": {name: properties[name] for name in [*keep, *flags]},
        "required": keep,
    }
    return spec.model_copy(update={"input_schema": slim})


# A relative path: no leading "/" or "~" (small models write "/app.py" for "app.py"),
# nothing that would end the JSON string.
_RELATIVE_PATH = r'^[^/~ "\\][^"\\]*$'


def relative_paths(spec: ToolSpec) -> ToolSpec:
    """The tool with its `path` argument constrained to a relative path (for the grammar)."""
    schema = spec.input_schema or {}
    properties = cast(dict[str, Any], schema.get("properties") or {})
    path = properties.get("path")
    if not isinstance(path, dict) or cast(dict[str, Any], path).get("type") != "string":
        return spec
    constrained = {**cast(dict[str, Any], path), "pattern": _RELATIVE_PATH}
    slim = {**schema, "properties": {**properties, "path": constrained}}
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
    # The workspace's part of the system prompt goes after the tools, so the prompt starts
    # with the same tokens in every workspace (a prefix whose prefill can be kept).
    text, heading, repository = text.partition("\n\n" + REPOSITORY_HEADING)
    if tools:
        text += TOOLS_PREAMBLE
        text += "".join("\n" + _dumps(tool_entry(spec)) for spec in tools)
        text += TOOLS_POSTAMBLE
    return f"{START}system\n{text}{heading}{repository}{END_OF_TURN}\n"


def fixed_prefix(prompt: str) -> str:
    """The start of `prompt` that is the same in every workspace: system rules and tools."""
    end = prompt.find(TOOLS_POSTAMBLE)
    return prompt[: end + len(TOOLS_POSTAMBLE)] if end >= 0 else ""


def _trim(text: str) -> str:
    """At most `RESULT_CHARS`: the start and the end (where a command's summary is)."""
    if len(text) <= RESULT_CHARS:
        return text
    head, tail = text[: RESULT_CHARS * 2 // 3], text[-(RESULT_CHARS // 3) :]
    hidden = text[len(head) : len(text) - len(tail)]
    return f"{head}\n[... {hidden.count(chr(10)) + 1} lines not shown: grep for a part ...]\n{tail}"


def _shown_result(block: ToolResultBlock, tool: str) -> str:
    text = block.content
    if tool == "read_file" and not block.is_error:
        text = _LINE_NUMBER.sub("", text)
    # The model cannot see images: it reads one line for each.
    return _sanitize("\n".join([_trim(text), *(i.placeholder() for i in block.images)]))


def _render_user(message: Message, tools_of: dict[str, str]) -> str:
    parts: list[str] = []
    results = [b for b in message.content if isinstance(b, ToolResultBlock)]
    if results:
        body = "".join(
            "\n<tool_response>\n"
            + ("Error: " if block.is_error else "")
            + _shown_result(block, tools_of.get(block.tool_use_id, ""))
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
    results trimmed; a system prompt's repository part, from `REPOSITORY_HEADING` on, put
    after the tools), so the model sees what it was trained on, and append-only for a
    growing transcript, so llama.cpp reuses the KV cache of the shared prefix. `note` is a
    last user turn for this request only (the reminder); it costs the re-reading of itself.
    """
    out = [_render_system(system, tools)]
    tools_of: dict[str, str] = {}  # tool_use_id -> tool name
    for message in messages:
        if message.role == "user":
            out.append(_render_user(message, tools_of))
        else:
            tools_of.update((use.id, use.name) for use in message.tool_uses)
            out.append(_render_assistant(message))
    if note:
        out.append(f"{START}user\n{_sanitize(note)}{END_OF_TURN}\n")
    out.append(f"{START}assistant\n")
    return "".join(out)


def with_answer(tools: Sequence[ToolSpec]) -> list[ToolSpec]:
    """The tools as the local model sees them: essential arguments, the `answer` action last.

    list_files is left out when bash is there: the system prompt lists the repository's
    files, and a small model counting a listing miscounts (`find | wc -l` does not).
    """
    if not tools:
        return []
    names = {t.name for t in tools}
    left_out = {ANSWER.name, *(_REPLACED_BY_BASH if "bash" in names else ())}
    return [*(essential(t) for t in tools if t.name not in left_out), ANSWER]


_REPLACED_BY_BASH = frozenset({"list_files"})
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


_WORD = re.compile(r"[\w][\w./-]*")
_FILLER = frozenset(
    {
        *("a", "an", "the", "is", "are", "was", "be", "it", "its", "this", "that", "of"),
        *("in", "on", "at", "to", "for", "from", "by", "with", "and", "or", "as"),
        *("file", "files", "function", "value", "here", "there"),
    }
)


def _says_something_new(answer: str, task: str) -> bool:
    """Whether the answer has a word the task has not (a value, a name, a number)."""
    asked = {w.rstrip(".") for w in _WORD.findall(task.lower())}

    def known(word: str) -> bool:
        # "call" is known from "calls": small models restate the task in other forms.
        return word in asked or any(
            len(word) >= 4 and len(a) >= 4 and (a.startswith(word) or word.startswith(a))
            for a in asked
        )

    words = {w.rstrip(".") for w in _WORD.findall(answer.lower())}
    return any(w and w not in _FILLER and not known(w) for w in words)


# Words of the reminders that a small model copies into its "answer".
_REMINDER_PHRASES = (
    "call answer now",
    "make the next tool call",
    "call answer saying",
    "make the next change",
    "no file has been changed yet",
    "answer with the number",
)
# After this many tool calls an answer made of the task's words is let through: the
# answer may be in the question ("is it 8042 or 8080?").
_PARROT_CALLS = 3


def parrots(answer: str, messages: Sequence[Message]) -> bool:
    """Whether an answer only repeats the task or the reminder (a small model's fallback)."""
    said = " ".join(answer.lower().split())
    if any(phrase in said for phrase in _REMINDER_PHRASES):
        return True
    task = " ".join(task_of(messages).lower().split())
    if len(task) >= 12 and task in said and len(said) < len(task) + 12:
        return True
    calls = sum(len(m.tool_uses) for m in messages)
    return bool(task) and calls < _PARROT_CALLS and not _says_something_new(said, task)


def task_of(messages: Sequence[Message]) -> str:
    """The user's latest request (not a runtime note)."""
    return next((m.text for m in reversed(messages) if m.is_users_own and m.text.strip()), "")


def asks_for_change(task: str) -> bool:
    """Whether a task asks for files to change (fix, rename, add, create, ...)."""
    return _CHANGE_VERB.search(task.strip()) is not None


def is_question(task: str) -> bool:
    """Whether a task only asks for information: a small model then has no use for edits."""
    return not asks_for_change(task) and _QUESTION.search(task) is not None


def has_changed(messages: Sequence[Message]) -> bool:
    """Whether a call that changes files worked since the user's latest request."""
    ok = {r.tool_use_id for m in messages for r in m.tool_results if not r.is_error}
    for message in reversed(messages):
        if message.is_users_own and message.text.strip():
            return False
        for use in message.tool_uses:
            if use.id not in ok:
                continue
            command = str(use.input.get("command", "")) if use.name == "bash" else ""
            if use.name in _CHANGING or _WRITING_COMMAND.search(command):
                return True
    return False


def _since_request(messages: Sequence[Message]) -> list[tuple[ToolUseBlock, ToolResultBlock]]:
    """The calls since the user's latest request that worked, with their results, newest first."""
    results = {r.tool_use_id: r for m in messages for r in m.tool_results if not r.is_error}
    found: list[tuple[ToolUseBlock, ToolResultBlock]] = []
    for message in reversed(messages):
        if message.is_users_own and message.text.strip():
            break
        found += [(u, results[u.id]) for u in reversed(message.tool_uses) if u.id in results]
    return found


def has_read(messages: Sequence[Message]) -> bool:
    """Whether a read_file or grep worked since the user's latest request."""
    return any(use.name in _READING for use, _ in _since_request(messages))


def _counts(task: str) -> bool:
    return _HOW_MANY.search(task) is not None


def _has_run(messages: Sequence[Message]) -> bool:
    """Whether a bash command ran since the user's latest request (whatever its exit code:
    pytest exits 1 when tests fail, and that output is the count)."""
    return any(use.name == "bash" for use, _ in _since_request(messages))


def callable_tools(
    tools: Sequence[ToolSpec], messages: Sequence[Message], *, must_act: bool = False
) -> list[ToolSpec]:
    """What a small model may call this turn (the grammar's choice; the prompt lists all).

    A question cannot change files (a 0.5B model "answers" a question with an edit); a
    change cannot be answered before a file changed (it "answers" with the task), nor a
    file edited before one was read (it edits the text it imagines); and a model that has
    not acted yet must act (`must_act`).
    A how-many question is answered from a command's output, not from the model's
    counting.
    """
    shown = with_answer(tools)
    names = {t.name for t in shown}
    task = task_of(messages)
    if is_question(task):
        shown = [t for t in shown if t.name not in _CHANGING]
    elif not has_read(messages):
        # Nor overwritten: before a read, write_file only makes a file the task creates.
        unread = {"edit_file"} if _CREATES.search(task) else _CHANGING
        shown = [t for t in shown if t.name not in unread]
    unanswerable = (
        must_act
        or (asks_for_change(task) and not has_changed(messages))
        or (_counts(task) and "bash" in names and not _has_run(messages))
    )
    if unanswerable:
        shown = [t for t in shown if t.name != ANSWER.name]
    return shown


def reminder(messages: Sequence[Message]) -> str | None:
    """After tool results: the task again, and when to answer (None elsewhere)."""
    if not messages or not messages[-1].tool_results:
        return None
    task = task_of(messages)
    if not task:
        return None
    if len(task) > 600:
        task = task[:600] + " [...]"
    if _counts(task) and not _has_run(messages):
        template = REMINDER_TO_COUNT
    elif not asks_for_change(task):
        template = REMINDER
    elif has_changed(messages):
        template = REMINDER_CHANGED
    else:
        template = REMINDER_TO_CHANGE
    return template.format(task=task.strip())


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
