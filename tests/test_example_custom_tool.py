"""The custom tool example runs through a Toolset and loads as a --tools spec."""

from __future__ import annotations

from pathlib import Path

import pytest

from examples.custom_tool import TOOLS, count_lines
from tidemark.tools import DenyApprover, ToolCall, ToolContext, Toolset, builtin_tools, load_tools

pytestmark = pytest.mark.anyio
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "big.py").write_text("a = 1\n\nb = 2\nc = 3\n")
    (tmp_path / "small.py").write_text("x = 1\n")
    (tmp_path / "notes.md").write_text("not code\n")
    return tmp_path


async def test_count_lines_counts_matching_files_largest_first(workspace: Path) -> None:
    toolset = Toolset(builtin_tools()).with_tools(TOOLS)
    [outcome] = await toolset.execute(
        [ToolCall("1", "count_lines", {})], ToolContext(workspace), DenyApprover()
    )
    assert not outcome.is_error  # read-only: no approval needed
    assert outcome.content.splitlines() == [
        "      3  pkg/big.py",
        "      1  small.py",
        "      4  total in 2 files",
    ]


async def test_count_lines_takes_its_options_and_reports_an_empty_match(workspace: Path) -> None:
    toolset = Toolset([count_lines])
    calls = [
        ToolCall("1", "count_lines", {"glob": "**/*.py", "skip_blank": False, "top": 1}),
        ToolCall("2", "count_lines", {"glob": "*.rs"}),
    ]
    outcomes = await toolset.execute(calls, ToolContext(workspace), DenyApprover())
    assert outcomes[0].content.splitlines() == [
        "      4  pkg/big.py",
        "    ...  (1 smaller files not shown; raise top)",
        "      5  total in 2 files",
    ]
    assert outcomes[1].is_error and "no text files match '*.rs'" in outcomes[1].content


def test_the_example_schema_describes_every_input() -> None:
    props = count_lines.input_schema["properties"]
    assert set(props) == {"glob", "skip_blank", "top"}
    assert all(p.get("description") for p in props.values())
    assert props["top"]["maximum"] == 200


def test_the_example_loads_as_a_tools_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    assert [t.name for t in load_tools("examples.custom_tool:TOOLS")] == ["count_lines"]
    assert [t.name for t in load_tools("examples/custom_tool.py:TOOLS")] == ["count_lines"]
