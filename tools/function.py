"""Turn a typed Python function into a tool: schema from its hints and docstring."""

from __future__ import annotations

import functools
import inspect
import re
import typing
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, cast, overload

import anyio.to_thread
import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from .errors import ToolError
from .interface import FileAccess, ToolContext, ToolOutput

__all__ = ["FunctionTool", "tool"]

_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_SECTION = re.compile(r"^(Args|Arguments|Parameters|Params):\s*$")
_OTHER_SECTION = re.compile(
    r"^(Returns?|Yields?|Raises|Examples?|Notes?|Warnings?|See Also|Attributes):\s*$"
)
_ARG_LINE = re.compile(r"^(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
# Internal field names never clash with BaseModel attributes; the schema shows the alias.
_FIELD_PREFIX = "arg_"


class FunctionTool:
    """A tool backed by a function (sync functions run in a worker thread)."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        read_only: bool = False,
        needs_approval: bool = False,
        timeout: float | None = None,
        files: FileAccess | None = None,
    ) -> None:
        self.fn = fn
        self.name = name or fn.__name__
        if not _NAME.match(self.name):
            raise ValueError(f"tool name {self.name!r} must match {_NAME.pattern}")
        summary, arg_docs = parse_docstring(inspect.getdoc(fn) or "")
        self.description = description or summary or self.name.replace("_", " ")
        self.read_only = read_only
        self.needs_approval = needs_approval
        self.timeout = timeout
        # "read" / "write": the call reads or changes the file its `path` input names (the
        # runtime keeps a list of files read and modified for the session memory).
        self.files = files
        self._is_async = inspect.iscoroutinefunction(fn)
        self._context_params, self._params, self._model = _input_model(fn, self.name, arg_docs)
        self.input_schema = _tidy_schema(self._model.model_json_schema())
        self._defaults = {
            name
            for name, prop in self.input_schema["properties"].items()
            if "default" in prop and prop["default"] is not None
        }

    def __repr__(self) -> str:
        return f"FunctionTool({self.name!r})"

    async def run(self, input: dict[str, Any], ctx: ToolContext) -> str | ToolOutput:
        # Small models often send null for an input they mean to leave out.
        input = {k: v for k, v in input.items() if v is not None or k not in self._defaults}
        try:
            validated = self._model.model_validate(input)
        except ValidationError as error:
            raise ToolError(describe_validation_error(self.name, error)) from None
        kwargs = {param: getattr(validated, _FIELD_PREFIX + param) for param in self._params}
        kwargs.update(dict.fromkeys(self._context_params, ctx))
        if self._is_async:
            result = await cast(Callable[..., Awaitable[Any]], self.fn)(**kwargs)
        else:
            call = functools.partial(self.fn, **kwargs)
            result = await anyio.to_thread.run_sync(call, abandon_on_cancel=True)
        if isinstance(result, ToolOutput):
            return result  # text and images, passed on as they are
        return render_result(result)


@overload
def tool(fn: Callable[..., Any], /) -> FunctionTool: ...
@overload
def tool(
    fn: None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    read_only: bool = False,
    needs_approval: bool = False,
    timeout: float | None = None,
    files: FileAccess | None = None,
) -> Callable[[Callable[..., Any]], FunctionTool]: ...
def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    read_only: bool = False,
    needs_approval: bool = False,
    timeout: float | None = None,
    files: FileAccess | None = None,
) -> FunctionTool | Callable[[Callable[..., Any]], FunctionTool]:
    """Make a tool of a function, used bare (``@tool``) or with options (``@tool(...)``).

    The input schema comes from the type hints; the description from the docstring's first
    paragraph; per-parameter descriptions from its Google-style ``Args:`` section. A
    parameter annotated ``ToolContext`` receives the context and is not in the schema.
    ``files="read"`` / ``"write"``: the tool reads or changes the file its ``path`` input
    names (the session memory lists files read and modified).
    """

    def wrap(function: Callable[..., Any]) -> FunctionTool:
        return FunctionTool(
            function,
            name=name,
            description=description,
            read_only=read_only,
            needs_approval=needs_approval,
            timeout=timeout,
            files=files,
        )

    return wrap if fn is None else wrap(fn)


def parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """Return (first paragraph, {parameter: description}) of a Google-style docstring."""
    lines = inspect.cleandoc(doc).splitlines()
    summary_lines: list[str] = []
    for line in lines:
        if not line.strip() or _SECTION.match(line.strip()):
            break
        summary_lines.append(line.strip())
    args: dict[str, str] = {}
    in_args = False
    section_indent = 0
    current: str | None = None
    entry_indent = 0
    for line in lines:
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if _SECTION.match(stripped):
            in_args, section_indent, current = True, indent, None
            continue
        if not in_args or not stripped:
            continue
        if indent <= section_indent or _OTHER_SECTION.match(stripped):
            in_args = False
            continue
        match = _ARG_LINE.match(stripped)
        if match and (current is None or indent <= entry_indent):
            current = str(match.group(1)).lstrip("*")
            entry_indent = indent
            args[current] = str(match.group(2)).strip()
        elif current is not None:
            args[current] = f"{args[current]} {stripped}".strip()
    return " ".join(summary_lines), args


def describe_validation_error(tool_name: str, error: ValidationError) -> str:
    problems: list[str] = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "input"
        problems.append(f"{field}: {item['msg']}")
    return f"invalid input for {tool_name}: " + "; ".join(problems)


def render_result(result: object) -> str:
    if isinstance(result, str):
        return result
    if result is None:
        return ""
    if isinstance(result, BaseModel):
        return result.model_dump_json(indent=2)
    return pydantic_core.to_json(result, indent=2, fallback=str).decode()


def _input_model(
    fn: Callable[..., Any], tool_name: str, arg_docs: dict[str, str]
) -> tuple[list[str], list[str], type[BaseModel]]:
    signature = inspect.signature(fn)
    hints = _type_hints(fn)
    context_params: list[str] = []
    params: list[str] = []
    fields: dict[str, Any] = {}
    for param in signature.parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(f"tool {tool_name}: *args/**kwargs are not supported")
        if param.kind is param.POSITIONAL_ONLY:
            raise TypeError(f"tool {tool_name}: positional-only parameters are not supported")
        hint: Any = hints.get(param.name, Any)
        if hint is ToolContext:
            context_params.append(param.name)
            continue
        params.append(param.name)
        info = Field(alias=param.name, description=arg_docs.get(param.name))
        default: Any = ... if param.default is param.empty else param.default
        fields[_FIELD_PREFIX + param.name] = (Annotated[hint, info], default)
    model = create_model(  # pyright: ignore[reportCallIssue, reportUnknownVariableType]
        f"{tool_name}_input",
        __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=False),
        **fields,
    )
    return context_params, params, model


def _type_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn, include_extras=True)
    except (NameError, TypeError) as error:
        raise TypeError(f"cannot resolve the type hints of {fn.__name__}: {error}") from error


def _tidy_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Drop pydantic's titles and collapse ``X | None = None`` to ``X``: small models read this."""
    tidy = _tidy_node(schema)
    tidy.pop("title", None)
    tidy.setdefault("properties", {})
    return tidy


def _tidy_node(node: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in node.items():
        if key == "title" and isinstance(value, str):
            continue
        if key in ("properties", "$defs") and isinstance(value, dict):
            children = cast(dict[str, Any], value)
            result[key] = {k: _tidy_property(v) for k, v in children.items()}
        elif key in ("anyOf", "allOf", "oneOf", "prefixItems") and isinstance(value, list):
            result[key] = [_tidy_node(v) for v in cast(list[dict[str, Any]], value)]
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            result[key] = _tidy_node(cast(dict[str, Any], value))
        else:
            result[key] = value
    return result


def _tidy_property(prop: dict[str, Any]) -> dict[str, Any]:
    tidy = _tidy_node(prop)
    variants: object = tidy.get("anyOf")
    if isinstance(variants, list) and tidy.get("default", ...) is None:
        variants = cast(list[dict[str, Any]], variants)
        others = [v for v in variants if v != {"type": "null"}]
        if len(others) == 1 and len(others) < len(variants):
            del tidy["anyOf"], tidy["default"]
            tidy = {**others[0], **tidy}
    return tidy
