"""The main job offline: `tidemark run` with no API key uses the embedded model for real."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tidemark.errors import ProviderUnavailableError
from tidemark.providers.local import locate_model_parts

pytest.importorskip("llama_cpp", reason="needs the 'local' extra: pip install '.[local]'")
try:
    locate_model_parts()
except ProviderUnavailableError as exc:
    pytest.skip(str(exc), allow_module_level=True)

pytestmark = [pytest.mark.local_model, pytest.mark.slow, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parent.parent


def test_with_no_api_key_the_cli_runs_the_local_model_and_it_makes_a_real_tool_call(
    tmp_path: Path,
) -> None:
    workspace = tmp_path / "repo"
    shutil.copytree(ROOT / "examples" / "buggy_repo", workspace)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tidemark.cli",
            "run",
            "--workspace",
            str(workspace),
            "--yes",
            "--max-turns",
            "2",
            "Read config.py and tell me the value of PORT",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=880,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    # A small model may not finish in two turns (exit 1, turn cap); it must not crash.
    assert done.returncode in (0, 1), done.stderr
    assert "Traceback" not in done.stderr
    (session,) = (workspace / ".tidemark" / "sessions").iterdir()
    records = [json.loads(line) for line in (session / "transcript.jsonl").read_text().splitlines()]
    messages = [r["message"] for r in records if r["type"] == "message"]
    uses = [b for m in messages for b in m["content"] if b["type"] == "tool_use"]
    results = {
        b["tool_use_id"]: b for m in messages for b in m["content"] if b["type"] == "tool_result"
    }
    reads = [u for u in uses if u["name"] == "read_file" and u["input"].get("path") == "config.py"]
    assert reads, f"no read_file of config.py among {uses}"
    assert "PORT = 8042" in results[reads[0]["id"]]["content"]
    started = json.loads((session / "events.jsonl").read_text().splitlines()[0])
    assert started["provider"] == "LocalModel"
    # The settings come from the model (as for `Agent(LocalModel())`): its small threshold.
    events = [json.loads(line) for line in (session / "events.jsonl").read_text().splitlines()]
    assert {e["threshold"] for e in events if e["event"] == "turn_started"} == {6000}
