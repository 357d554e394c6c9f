"""examples/cookbook_demo.py runs against the local fake API and shows its comparison."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cookbook_demo_compacts_without_a_model_call_and_compares_full_and_compacted() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "cookbook_demo.py"),
            "--fake",
            "--time-scale",
            "0.02",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "[Turn 5] USER:" in out
    assert "update started in the background" in out
    # A forced compaction takes the smallest instant result: the memory + tail, or (since
    # long assistant texts can be stubbed) tool-result clearing; never a model call.
    assert re.search(
        r"After \((session_memory|tool_result_clearing), [\d.]+ ms, no model call\)", out
    )
    assert "RESPONSE TIME: FULL vs COMPACTED vs BLOCKING SUMMARY" in out
    assert "Session memory: " in out and "background updates" in out
