"""Durable files: atomic replace survives kill -9; torn JSONL lines are skipped, never continued."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tidemark.storage import JsonlAppender, atomic_write_text, read_jsonl


def test_kill_9_during_repeated_atomic_writes_leaves_a_whole_old_or_new_file(
    tmp_path: Path,
) -> None:
    target = tmp_path / "memory.md"
    atomic_write_text(target, "A" * 200_000)
    writer = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
        from pathlib import Path
        from tidemark.storage import atomic_write_text
        n = 0
        print("ready", flush=True)
        while True:
            n += 1
            atomic_write_text(Path({str(target)!r}), chr(65 + n % 26) * 200_000)
        """
    )
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        content = target.read_text()
        assert len(content) == 200_000
        assert len(set(content)) == 1


def test_a_torn_last_line_is_skipped_with_a_warning_and_new_lines_start_fresh(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"event": "a"}\n{"event": "tor')
    out = JsonlAppender(path)
    out.append({"event": "b"})
    out.close()
    with pytest.warns(RuntimeWarning, match="damaged line 2"):
        records = list(read_jsonl(path))
    assert records == [{"event": "a"}, {"event": "b"}]
    assert json.loads(path.read_text().splitlines()[-1]) == {"event": "b"}
