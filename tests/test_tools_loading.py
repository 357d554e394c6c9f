"""load_tools: turning a --tools module:attribute spec into tools, or a one-line error."""

from __future__ import annotations

import itertools
import textwrap
from pathlib import Path

import pytest

from tidemark.tools import FunctionTool, ToolLoadError, load_tools

_numbers = itertools.count()

MODULE = '''
from tidemark.tools import tool, ToolContext

@tool(read_only=True)
def shout(text: str) -> str:
    """Make text loud."""
    return text.upper()

def whisper(text: str) -> str:
    """Make text quiet."""
    return text.lower()

class Counter:
    name = "counter"
    description = "Count."
    input_schema = {"type": "object", "properties": {}}
    read_only = True
    needs_approval = False
    timeout = None

    async def run(self, input, ctx):
        return "1"

TOOLS = [shout, whisper]
ONE = shout
COUNTER = Counter()
NOT_A_TOOL = 42
EMPTY = []

def make_tools():
    return [shout, Counter()]

def make_nothing():
    return "oops"
'''


def write_module(folder: Path) -> str:
    name = f"user_tools_{next(_numbers)}"
    (folder / f"{name}.py").write_text(textwrap.dedent(MODULE))
    return name


@pytest.fixture
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.syspath_prepend(str(tmp_path))
    return write_module(tmp_path)


def test_a_list_of_tools_and_plain_functions_loads(module: str) -> None:
    loaded = load_tools(f"{module}:TOOLS")
    assert [t.name for t in loaded] == ["shout", "whisper"]
    assert isinstance(loaded[1], FunctionTool) and loaded[1].description == "Make text quiet."


def test_a_single_tool_or_tool_object_loads(module: str) -> None:
    assert [t.name for t in load_tools(f"{module}:ONE")] == ["shout"]
    assert [t.name for t in load_tools(f"{module}:COUNTER")] == ["counter"]


def test_a_zero_argument_factory_is_called(module: str) -> None:
    assert [t.name for t in load_tools(f"{module}:make_tools")] == ["shout", "counter"]


def test_a_plain_function_with_parameters_is_wrapped(module: str) -> None:
    [loaded] = load_tools(f"{module}:whisper")
    assert loaded.name == "whisper" and loaded.input_schema["required"] == ["text"]


def test_a_tool_class_is_instantiated(module: str) -> None:
    [loaded] = load_tools(f"{module}:Counter")
    assert loaded.name == "counter" and not isinstance(loaded, type)


def test_a_module_in_the_current_directory_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = write_module(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert [t.name for t in load_tools(f"{name}:ONE")] == ["shout"]


def test_a_file_path_spec_loads(tmp_path: Path) -> None:
    name = write_module(tmp_path)
    assert [t.name for t in load_tools(f"{tmp_path / name}.py:ONE")] == ["shout"]


@pytest.mark.parametrize(
    ("attribute", "message"),
    [
        ("MISSING", "has no attribute 'MISSING'"),
        ("NOT_A_TOOL", "expected a Tool, a list of Tools or a function returning them, got int"),
        ("EMPTY", "no tools found"),
        ("make_nothing", "got str"),
    ],
)
def test_a_bad_attribute_gives_a_one_line_error(module: str, attribute: str, message: str) -> None:
    with pytest.raises(ToolLoadError, match=message) as error:
        load_tools(f"{module}:{attribute}")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon", "--tools expects module:attribute"),
        ("module:", "--tools expects module:attribute"),
        ("surely_missing_module_xyz:TOOLS", "cannot import surely_missing_module_xyz"),
        ("missing_dir/tools.py:TOOLS", "no such file"),
    ],
)
def test_a_bad_spec_gives_a_one_line_error(spec: str, message: str) -> None:
    with pytest.raises(ToolLoadError, match=message) as error:
        load_tools(spec)
    assert "\n" not in str(error.value)


def test_a_module_that_fails_to_import_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "broken_tools_mod.py").write_text(
        "import json\nraise RuntimeError('needs config')\n"
    )
    with pytest.raises(
        ToolLoadError, match="cannot import broken_tools_mod: RuntimeError: needs config"
    ):
        load_tools("broken_tools_mod:TOOLS")


def test_a_missing_dependency_is_named_not_mistaken_for_the_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "needs_dep_mod.py").write_text("import surely_missing_dependency_xyz\n")
    with pytest.raises(ToolLoadError, match="No module named 'surely_missing_dependency_xyz'"):
        load_tools("needs_dep_mod:TOOLS")
