"""`tidemark inspect` on a recorded session, and the live progress line."""

from __future__ import annotations

import io
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from tidemark import Agent, ScriptedModel, Settings
from tidemark.cli import main
from tidemark.inspection import summarize
from tidemark.prices import PRICES, PRICES_AS_OF, PRICES_SOURCE, estimate_cost, price_for
from tidemark.progress import PlainProgress, RichProgress, follow, make_progress

RECORDED = Path(__file__).parent / "data" / "recorded-session"


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A copy of the recorded session's workspace (tests may damage its files)."""
    target = tmp_path / "ws"
    shutil.copytree(RECORDED, target)
    return target


RECORDED_ID = next((RECORDED / ".tidemark" / "sessions").iterdir()).name


def session_dir(workspace: Path) -> Path:
    return workspace / ".tidemark" / "sessions" / RECORDED_ID


def events_of(workspace: Path) -> list[dict[str, Any]]:
    text = (session_dir(workspace) / "events.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def named(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == name]


def inspect(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["inspect", *args])
    out, err = capsys.readouterr()
    return code, out, err


# -- the timeline ------------------------------------------------------------------------------


def test_recorded_session_has_every_kind_of_event_the_tests_rely_on(workspace: Path) -> None:
    kinds = Counter(e["event"] for e in events_of(workspace))
    strategies = {e["strategy"] for e in named(events_of(workspace), "compaction")}
    assert {"session_memory", "tool_result_clearing"} <= strategies
    assert kinds["summary_boundary"] >= 2
    assert kinds["memory_update_failed"] >= 1
    assert sum(f.stat().st_size for f in session_dir(workspace).iterdir()) < 300_000


def test_inspect_shows_each_compaction_with_strategy_tokens_and_what_it_kept(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = inspect(capsys, "--workspace", str(workspace))
    assert code == 0
    assert err == ""
    for c in named(events_of(workspace), "compaction"):
        assert f"COMPACTION {c['strategy']}" in out
        assert f"{c['pre_tokens']:,} → {c['post_tokens']:,} tokens" in out
        assert f"dropped {c['messages_dropped']}, kept {c['messages_kept']} messages" in out
        assert f"{c['tool_results_cleared']} results tombstoned" in out
        assert f"memory boundary {c['boundary_message_id'] or 'none'}" in out


def test_inspect_shows_memory_updates_and_where_each_boundary_is(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = inspect(capsys, "--workspace", str(workspace))
    events = events_of(workspace)
    for b in named(events, "summary_boundary"):
        assert f"memory covers up to {b['message_id']} (message #{b['message_index']})" in out
    for u in named(events, "memory_update_started"):
        assert f"memory update {u['update']} started" in out
    for u in named(events, "memory_update_committed"):
        assert f"memory update {u['update']} committed" in out
        assert f"memory {u['memory_tokens']:,} tokens" in out
    for u in named(events, "memory_update_failed"):
        assert f"memory update {u['update']} FAILED" in out
        assert u["error"] in out


def test_inspect_shows_turns_with_tokens_and_the_tools_they_ran(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = inspect(capsys, "--workspace", str(workspace))
    first = named(events_of(workspace), "turn_finished")[0]
    line = next(line for line in out.splitlines() if " turn 1 " in line)
    assert f"in {first['input_tokens']:,}" in line
    assert f"out {first['output_tokens']:,}" in line
    assert first["stop_reason"] in line
    assert named(events_of(workspace), "tool_call")[0]["tool"] in line


def test_inspect_summary_totals_come_from_the_events(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = inspect(capsys, "--workspace", str(workspace))
    events = events_of(workspace)
    turns = named(events, "turn_finished")
    summary = out[out.index("summary") :]
    assert f"turns                {len(turns)}" in summary
    assert f"input {sum(t['input_tokens'] for t in turns):,}" in summary
    assert f"output {sum(t['output_tokens'] for t in turns):,}" in summary
    by_strategy = Counter(c["strategy"] for c in named(events, "compaction"))
    for strategy, n in by_strategy.items():
        assert f"{strategy} {n}" in summary
    committed = len(named(events, "memory_update_committed"))
    failed = len(named(events, "memory_update_failed"))
    assert f"{committed} committed, {failed} failed" in summary
    assert "estimated cost       $" in summary
    assert f"as of {PRICES_AS_OF}, from {PRICES_SOURCE}" in summary
    assert "longest stall" in summary


def test_cost_uses_the_price_table_and_says_so_for_unknown_models() -> None:
    cost = estimate_cost(
        "claude-sonnet-4-5-20250929",
        input_tokens=2_000_000,
        output_tokens=1_000_000,
        cache_read=1_000_000,
        cache_write=0,
    )
    assert cost == pytest.approx(3.0 + 15.0 + 0.30)
    assert price_for("claude-sonnet-4-20250514") == PRICES["claude-sonnet-4"]
    assert price_for("claude-opus-4-0") == PRICES["claude-opus-4"]
    assert price_for("claude-opus-4-5") is None  # not the price of claude-opus-4
    events = [{"event": "session_started", "model": "qwen2.5-coder-7b.gguf"}]
    summary = summarize("s", events)
    assert summary.estimated_cost_usd is None
    assert summary.cost_note.startswith("cost: unknown model")


# -- --json --------------------------------------------------------------------------------------


def test_json_prints_every_event_then_a_summary_object(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = inspect(capsys, "--workspace", str(workspace), "--json")
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    events = events_of(workspace)
    assert lines[:-1] == events
    summary = lines[-1]
    assert summary["event"] == "summary"
    turns = named(events, "turn_finished")
    assert summary["turns"] == len(turns)
    assert summary["compactions"] == len(named(events, "compaction"))
    assert summary["output_tokens"] == sum(
        t["output_tokens"] for t in named(events, "turn_finished")
    )
    assert summary["longest_stall_ms"] == max(c["duration_ms"] for c in named(events, "compaction"))
    assert summary["estimated_cost_usd"] > 0


# -- --list --------------------------------------------------------------------------------------


def test_list_shows_each_session_with_task_turns_compactions_and_state(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    killed = workspace / ".tidemark" / "sessions" / "20991231-235959-abcdef"
    killed.mkdir()
    (killed / "events.jsonl").write_text(
        json.dumps(
            {
                "event": "session_started",
                "timestamp": "2099-12-31T23:59:59.000Z",
                "session_id": killed.name,
                "task": "second task\nwith details",
                "model": "m",
            }
        )
        + "\n"
    )
    code, out, _ = inspect(capsys, "--workspace", str(workspace), "--list")
    assert code == 0
    events = events_of(workspace)
    recorded = next(line for line in out.splitlines() if session_dir(workspace).name in line)
    assert "fix the restock bug" in recorded
    assert "finished" in recorded
    assert f" {len(named(events, 'turn_finished'))} " in recorded
    assert f" {len(named(events, 'compaction'))} " in recorded
    second = next(line for line in out.splitlines() if killed.name in line)
    assert "second task" in second
    assert "with details" not in out
    assert "unfinished" in second

    _, latest, _ = inspect(capsys, "--workspace", str(workspace))
    assert "task: second task" in latest  # the latest session by default
    assert "COMPACTION" not in latest
    _, chosen, _ = inspect(capsys, "--workspace", str(workspace), "--session", RECORDED_ID)
    assert "task: fix the restock bug" in chosen
    assert "COMPACTION" in chosen


# -- --messages ------------------------------------------------------------------------------


def test_messages_marks_each_memory_boundary_after_the_message_it_covers(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = inspect(capsys, "--workspace", str(workspace), "--messages")
    assert code == 0
    lines = out.splitlines()
    events = events_of(workspace)
    commits = named(events, "memory_update_committed")
    for b in named(events, "summary_boundary"):
        update = next(c["update"] for c in commits if c["covers_message_id"] == b["message_id"])
        at = next(i for i, line in enumerate(lines) if b["message_id"] in line)
        assert lines[at].split()[0] == str(b["message_index"])
        assert lines[at + 1] == f"── memory covers up to here (update {update}) ──"


def test_messages_marks_compactions_and_what_the_context_keeps(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = inspect(capsys, "--workspace", str(workspace), "--messages")
    compactions = named(events_of(workspace), "compaction")
    for n, c in enumerate(compactions, 1):
        assert f"══ compaction {n} ({c['strategy']}) here: {c['pre_tokens']:,} →" in out
    records = [
        json.loads(line)
        for line in (session_dir(workspace) / "transcript.jsonl").read_text().splitlines()
    ]
    last_context = [r for r in records if r["type"] == "context"][-1]
    kept = set(last_context["message_ids"])
    states: dict[str, str] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) > 4 and parts[1].startswith("msg_"):
            states[parts[1]] = line
    messages = [r["message"] for r in records if r["type"] == "message"]
    upto = next(i for i, r in enumerate(records) if r is last_context)
    before_last = [r["message"] for r in records[:upto] if r["type"] == "message"]
    dropped = [m for m in before_last if m["id"] not in kept and m["origin"] != "user"]
    assert dropped, "the recorded session's last compaction dropped messages"
    for m in dropped:
        assert " dropped " in states[m["id"]]
    for message_id in kept:
        assert " dropped " not in states[message_id]
    tombstoned = set(last_context["tombstones"])
    with_tombstone = [
        m
        for m in messages
        if any(b.get("tool_use_id") in tombstoned for b in m["content"]) and m["id"] in kept
    ]
    assert with_tombstone
    for m in with_tombstone:
        assert " tombstoned " in states[m["id"]]


# -- damage and bad input --------------------------------------------------------------------


def test_damaged_events_file_is_shown_up_to_the_damage_with_a_one_line_warning(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = session_dir(workspace) / "events.jsonl"
    lines = path.read_text().splitlines()
    middle = len(lines) // 2
    damaged = [*lines[:middle], "\x00garbage{{ not json", *lines[middle:-1], lines[-1][:25]]
    path.write_text("\n".join(damaged))  # a torn last line: no newline, cut mid-record
    code, out, err = inspect(capsys, "--workspace", str(workspace))
    assert code == 0
    assert len(err.splitlines()) == 1
    assert "warning" in err
    assert "skipped 2 damaged lines" in err
    assert "Traceback" not in err
    for c in named([json.loads(line) for line in lines[:-1]], "compaction"):
        assert f"{c['pre_tokens']:,} → {c['post_tokens']:,} tokens" in out
    assert "session finished" not in out  # the torn last line was the session_finished event
    code, out, err = inspect(capsys, "--workspace", str(workspace), "--json")
    assert json.loads(out.splitlines()[-1])["damaged_lines"] == 2


def test_events_with_missing_keys_do_not_break_inspect(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = session_dir(workspace) / "events.jsonl"
    with path.open("a") as f:
        f.write('{"event": "compaction"}\n{"event": "turn_finished", "turn": "x"}\n[1, 2]\n')
        f.write('{"no_event": true}\n')
    code, out, err = inspect(capsys, "--workspace", str(workspace))
    assert code == 0
    assert "COMPACTION None" in out
    assert "turn x" in out
    assert err.splitlines() == [
        "tidemark: warning: events.jsonl: skipped 1 unusable record; showing the rest"
    ]


def test_unknown_session_exits_2_with_one_line(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = inspect(capsys, "--workspace", str(workspace), "--session", "nope")
    assert code == 2
    assert out == ""
    assert len(err.splitlines()) == 1
    assert "unknown session 'nope'" in err
    assert "tidemark inspect --list" in err


def test_missing_workspace_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = inspect(capsys, "--workspace", str(tmp_path / "nowhere"))
    assert code == 2
    assert len(err.splitlines()) == 1
    assert "does not exist" in err


# -- live progress ---------------------------------------------------------------------------


def test_progress_is_plain_lines_when_not_a_terminal() -> None:
    out = io.StringIO()
    progress = make_progress(out)
    assert isinstance(progress, PlainProgress)
    progress.memory_lag(3_120)
    progress.turn_started(7, 12_345, 20_000)
    assert out.getvalue() == (
        "tidemark: turn 7 | context 12,345/20,000 tokens | "
        "memory idle, last update 3,120 tokens ago\n"
    )


@pytest.mark.anyio
async def test_the_status_line_follows_a_library_run_through_its_events(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("hello\n")
    out = io.StringIO()
    steps = [ScriptedModel.call("read_file", path="a.txt"), ScriptedModel.reply("ok")]
    agent = Agent(
        ScriptedModel(steps),
        settings=Settings(workspace=tmp_path),
        on_event=follow(PlainProgress(out)),
    )
    await agent.run("read a.txt")
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("tidemark: turn 1 | context ")
    assert lines[1] == "tidemark:   read_file path='a.txt'"
    assert lines[2].startswith("tidemark: turn 2 | context ")


def test_live_status_line_shows_turn_tool_context_and_memory_state() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=160, color_system=None)
    progress = RichProgress(out, console)
    progress.turn_started(7, 18_500, 20_000)
    progress.tool_started("read_file", "path='a.py'")
    progress.memory_state("updating")
    line = _render(console, progress)
    assert "turn 7" in line
    assert "running read_file" in line
    assert "18,500/20,000" in line
    assert "memory updating" in line
    progress.memory_state("idle")
    progress.memory_lag(2_400)
    assert "memory idle, last update 2,400 tokens ago" in _render(console, progress)
    progress.close()
    assert "read_file path='a.py'" in out.getvalue()  # tool calls scroll above the line


def test_live_status_line_shows_a_local_model_reading_the_prompt_then_writing() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=160, color_system=None)
    progress = RichProgress(out, console)
    progress.turn_started(1, 1_076, 6_000)
    progress.model_progress("reading", 256, 845)
    assert "model reading the prompt 256/845 tokens" in _render(console, progress)
    progress.model_progress("writing", 12, 512)
    assert "model writing, 12 tokens" in _render(console, progress)
    progress.tool_started("read_file", "path='config.py'")
    assert "running read_file" in _render(console, progress)
    progress.close()


def _render(console: Console, progress: RichProgress) -> str:
    with console.capture() as capture:
        console.print(progress.render())
    return capture.get()
