"""examples/plot_context.py draws a recorded session's context over time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

ROOT = Path(__file__).parent.parent
SESSIONS = Path(__file__).parent / "data" / "recorded-session" / ".tidemark" / "sessions"


def test_plot_example_writes_a_png_of_the_recorded_session(tmp_path: Path) -> None:
    (events,) = SESSIONS.glob("*/events.jsonl")
    out = tmp_path / "context.png"
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "plot_context.py"), str(events), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 20_000  # a drawn chart, not an empty canvas


def test_plot_example_refuses_a_missing_file_with_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "plot_context.py"), str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1
