"""The benchmark harness runs end to end in its quick mode (so it cannot rot)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.__main__ import main


@pytest.mark.timeout(180)
def test_quick_benchmark_writes_tables_and_tidemark_never_blocks_at_compaction(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--quick", "--out", str(tmp_path)]) == 0

    printed = capsys.readouterr().out
    assert "| stall at compaction p50 |" in printed
    for name in ("summary.md", "compactions.md", "overhead.md", "scale.md", "raw.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert (tmp_path / "stalls.png").exists()

    raw = json.loads((tmp_path / "raw.json").read_text())
    by_name = {s["name"]: s for s in raw["strategies"]}
    tidemark = by_name["tidemark"]
    assert tidemark["outcome"] == "finished"
    assert tidemark["compactions"], "the quick session must reach compaction"
    assert tidemark["invalid"] == []
    assert tidemark["blocking_calls"] == 0
    assert all(c["model_calls"] == 0 for c in tidemark["compactions"])
    blocking = by_name["blocking"]
    assert blocking["blocking_calls"] == len(blocking["compactions"]) > 0
    assert by_name["none"]["overflow"], "without compaction the window must overflow"
