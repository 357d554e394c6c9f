"""API faults through the `tidemark` command: retried from the start, or one line and a resume.

Each fault is injected by the strict local server: error statuses before a stream starts
(the SDK retries them, honouring `retry-after`), and faults inside a stream (a dropped
connection, an `error` event, a malformed event, an end without `message_stop`, a stall),
which the provider retries from the start with backoff.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.fakeapi import FakeMessagesAPI, RecordedRequest, Reply, Script, text, tool_calls
from tests.test_cli import tidemark

# A stall is noticed after this many seconds without an event (the default is 120).
_STALL_ENV = {"TIDEMARK_STALL_TIMEOUT": "0.5"}
_PARTIAL = [{"type": "text", "text": "I will start by reading the file. " * 4}]

FAULTS: dict[str, dict[str, Any]] = {
    "429 with retry-after": {"status": 429, "retry_after_s": 0.2},
    "500": {"status": 500, "retry_after_s": 0.05},
    "529 overloaded": {"status": 529, "retry_after_s": 0.05},
    "connection dropped mid-stream": {"drop_stream_after_events": 5},
    "overloaded error event mid-stream": {"mid_stream_error": "overloaded_error"},
    "malformed event": {"malformed_event_after": 5},
    "end without message_stop": {"end_stream_after_events": 6},
    "stalled stream": {"stall_after_events": 5, "stall_s": 60.0},
}


def _faulty(fault: str) -> Reply:
    return Reply(content=list(_PARTIAL), **FAULTS[fault])


class _FailFirst:
    """Answers the first `fail` turn requests with the fault, then plays the script."""

    def __init__(self, fault: str, fail: int, script: Script) -> None:
        self.fault, self.fail, self.script = fault, fail, script
        self.injected = 0

    def __call__(self, request: RecordedRequest) -> Reply:
        if request.purpose == "turn" and self.injected < self.fail:
            self.injected += 1
            return _faulty(self.fault)
        return self.script(request)


def _task(tmp_path: Path) -> Script:
    (tmp_path / "notes.txt").write_text("the answer is 42\n")
    return Script([tool_calls(("read_file", {"path": "notes.txt"})), text("The answer is 42.")])


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_fault_on_a_turn_is_retried_from_the_start_and_the_run_finishes(
    tmp_path: Path, fault: str
) -> None:
    responder = _FailFirst(fault, 1, _task(tmp_path))
    with FakeMessagesAPI(responder) as api:
        done = tidemark("run", "--workspace", str(tmp_path), "read notes", api=api, env=_STALL_ENV)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "The answer is 42." in done.stdout
    turns = api.requests_for("turn")
    assert len(turns) == 3  # the faulty attempt, its retry, the final turn
    assert turns[0].body == turns[1].body  # retried from the start: the same request
    assert api.invalid_requests == []


@pytest.mark.parametrize(
    "fault", ["529 overloaded", "malformed event", "end without message_stop", "stalled stream"]
)
def test_a_fault_that_outlasts_the_retries_exits_1_with_one_line_and_resume_continues(
    tmp_path: Path, fault: str
) -> None:
    responder = _FailFirst(fault, 10_000, _task(tmp_path))
    with FakeMessagesAPI(responder) as api:
        done = tidemark("run", "--workspace", str(tmp_path), "read notes", api=api, env=_STALL_ENV)
        attempts = len(api.requests_for("turn"))
        responder.fail = 0  # the API is back
        resumed = tidemark("resume", "--workspace", str(tmp_path), api=api)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("tidemark: error")]
    assert len(errors) == 1, done.stderr
    assert errors[0].startswith("tidemark: error:") and "tidemark resume" in errors[0]
    assert attempts == 5 if fault == "529 overloaded" else attempts == 4
    # The event says what the command exited with (it once said interrupted, 130).
    (folder,) = (tmp_path / ".tidemark" / "sessions").iterdir()
    events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
    finished = [e for e in events if e["event"] == "session_finished"]
    assert [(e["outcome"], e["exit_code"]) for e in finished] == [("failed", 1), ("finished", 0)]
    assert resumed.returncode == 0, resumed.stderr
    assert "The answer is 42." in resumed.stdout
    assert api.invalid_requests == []
    first = api.requests_for("turn")[attempts]
    assert json.dumps(first.body["messages"][0]).count("read notes") == 1
