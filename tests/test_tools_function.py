"""The @tool decorator: schemas from hints and docstrings, validation, results."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import pytest

from tidemark.tools import (
    AutoApprover,
    FunctionTool,
    ToolCall,
    ToolContext,
    ToolError,
    ToolImage,
    ToolOutput,
    Toolset,
    tool,
)

pytestmark = pytest.mark.anyio


def _documented(
    path: str,
    mode: Literal["fast", "slow"] = "fast",
    count: int = 3,
    tags: list[str] | None = None,
    note: Optional[str] = None,  # noqa: UP045
) -> str:
    """Summarise a file for the model.

    More detail that is not part of the description.

    Args:
        path: File to summarise, relative to the workspace.
        mode: How hard to try. Slow is thorough
            and reads every line.
        count (int): How many points to list.
        tags: Labels to attach.

    Returns:
        The summary.
    """
    return f"{path} {mode} {count} {tags} {note}"


def test_the_description_is_the_first_docstring_paragraph() -> None:
    assert tool(_documented).description == "Summarise a file for the model."


def test_the_schema_has_types_defaults_and_required_fields_from_the_hints() -> None:
    schema = tool(_documented).input_schema
    assert schema["type"] == "object"
    assert schema["required"] == ["path"]
    assert schema["additionalProperties"] is False
    props = schema["properties"]
    assert list(props) == ["path", "mode", "count", "tags", "note"]
    assert props["path"]["type"] == "string"
    assert props["mode"]["enum"] == ["fast", "slow"]
    assert props["mode"]["default"] == "fast"
    assert props["count"] == {
        "type": "integer",
        "default": 3,
        "description": "How many points to list.",
    }
    assert "title" not in schema and all("title" not in p for p in props.values())


def test_optional_parameters_defaulting_to_none_show_only_their_real_type() -> None:
    props = tool(_documented).input_schema["properties"]
    assert props["tags"]["type"] == "array"
    assert props["tags"]["items"] == {"type": "string"}
    assert props["note"] == {"type": "string"}


def test_parameter_descriptions_come_from_the_args_section_including_continuations() -> None:
    props = tool(_documented).input_schema["properties"]
    assert props["path"]["description"] == "File to summarise, relative to the workspace."
    assert props["mode"]["description"] == "How hard to try. Slow is thorough and reads every line."
    assert "description" not in props["note"]


def test_a_tool_context_parameter_is_injected_and_not_in_the_schema(tmp_path: Path) -> None:
    @tool
    def where(ctx: ToolContext, name: str) -> str:
        """Say where a name would live."""
        return str(ctx.workspace / name)

    assert list(where.input_schema["properties"]) == ["name"]
    assert where.input_schema["required"] == ["name"]


async def test_a_tool_context_parameter_receives_the_context(tmp_path: Path) -> None:
    @tool
    def where(name: str, context: ToolContext) -> str:
        """Say where a name would live."""
        return str(context.workspace / name)

    ctx = ToolContext(tmp_path)
    assert await where.run({"name": "a.txt"}, ctx) == str(ctx.workspace / "a.txt")


def test_the_decorator_takes_options_and_overrides_the_name_and_description() -> None:
    @tool(name="shout", description="Make it loud.", read_only=True, timeout=5)
    def make_loud(text: str) -> str:
        return text.upper()

    assert isinstance(make_loud, FunctionTool)
    assert (make_loud.name, make_loud.description) == ("shout", "Make it loud.")
    assert make_loud.read_only and not make_loud.needs_approval
    assert make_loud.timeout == 5


def test_a_bare_decorated_function_is_neither_read_only_nor_approved_by_default() -> None:
    @tool
    def noop() -> str:
        return ""

    assert (noop.name, noop.read_only, noop.needs_approval, noop.timeout) == (
        "noop",
        False,
        False,
        None,
    )
    assert noop.input_schema == {"type": "object", "properties": {}, "additionalProperties": False}


async def test_sync_and_async_functions_both_run(tmp_path: Path) -> None:
    @tool
    def add(a: int, b: int = 1) -> int:
        return a + b

    @tool
    async def greet(name: str) -> str:
        return f"hello {name}"

    ctx = ToolContext(tmp_path)
    assert await add.run({"a": 2}, ctx) == "3"
    assert await greet.run({"name": "ada"}, ctx) == "hello ada"


async def test_structured_results_are_rendered_as_json(tmp_path: Path) -> None:
    @tool
    def stats() -> dict[str, int]:
        return {"files": 2}

    assert await stats.run({}, ToolContext(tmp_path)) == '{\n  "files": 2\n}'


async def test_invalid_input_raises_a_tool_error_naming_the_bad_field(tmp_path: Path) -> None:
    with pytest.raises(ToolError, match=r"invalid input for _documented: count: .*integer"):
        await tool(_documented).run({"path": "a", "count": "lots"}, ToolContext(tmp_path))


async def test_missing_and_unexpected_fields_are_named(tmp_path: Path) -> None:
    with pytest.raises(ToolError) as error:
        await tool(_documented).run({"file": "a"}, ToolContext(tmp_path))
    assert "path: Field required" in str(error.value)
    assert "file: Extra inputs are not permitted" in str(error.value)


async def test_field_names_that_shadow_pydantic_attributes_still_work(tmp_path: Path) -> None:
    @tool
    def echo(json: str, schema: str, model_config: str) -> str:
        return json + schema + model_config

    assert list(echo.input_schema["properties"]) == ["json", "schema", "model_config"]
    assert (
        await echo.run({"json": "a", "schema": "b", "model_config": "c"}, ToolContext(tmp_path))
        == "abc"
    )


def test_a_name_the_api_would_reject_is_refused_at_definition() -> None:
    with pytest.raises(ValueError, match="must match"):
        tool(name="has space")(lambda: "")


def test_variadic_parameters_are_refused_at_definition() -> None:
    def spread(*names: str) -> str:
        return ""

    with pytest.raises(TypeError, match=r"\*args"):
        tool(spread)


async def test_null_for_an_input_with_a_default_means_the_default(tmp_path: Path) -> None:
    result = await tool(_documented).run({"path": "a", "count": None}, ToolContext(tmp_path))
    assert result == "a fast 3 None None"


async def test_a_tool_may_return_text_and_images_which_reach_the_outcome(tmp_path: Path) -> None:
    png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgAAACAAFUok9dAAAAAElFTkSuQmCC"

    @tool(read_only=True)
    def plot() -> ToolOutput:
        """Plot the data."""
        return ToolOutput("The plot:", (ToolImage("image/png", png),))

    (outcome,) = await Toolset([plot]).execute(
        [ToolCall(id="toolu_1", name="plot", input={})],
        ToolContext(workspace=tmp_path),
        AutoApprover(),
    )
    assert (outcome.content, outcome.is_error) == ("The plot:", False)
    assert outcome.images == (ToolImage("image/png", png),)
