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
from tidemark.tools.atomic import atomic_write, replacing


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


def test_an_atomic_write_keeps_the_mode_of_the_file_it_replaces(tmp_path: Path) -> None:
    target = tmp_path / "run.sh"
    target.write_text("echo old\n")
    target.chmod(0o750)
    assert atomic_write(target, "echo new\n") is True
    assert target.read_text() == "echo new\n" and target.stat().st_mode & 0o777 == 0o750
    assert atomic_write(tmp_path / "deeper" / "new.txt", b"x") is False  # made, with its folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deeper", "run.sh"]


def test_a_replacement_that_fails_its_check_leaves_the_old_file_and_no_temporary_file(
    tmp_path: Path,
) -> None:
    target = tmp_path / ("long-" * 50 + ".bin")  # 255 bytes: the temporary name stays short
    target.write_bytes(b"old")
    with pytest.raises(ValueError, match="bad content"), replacing(target) as new:
        new.file.write(b"new but wrong")
        new.file.flush()
        assert new.temporary.read_bytes() == b"new but wrong" and new.existed
        raise ValueError("bad content")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


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
