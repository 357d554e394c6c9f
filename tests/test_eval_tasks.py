"""The offline eval's checkers: each rejects the untouched repository and accepts a solution."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.eval import EvalRow, table
from benchmarks.eval_tasks import QUICK, TASKS, Task, task_named


def test_there_are_at_least_twelve_tasks_with_unique_names_and_a_quick_subset() -> None:
    names = [t.name for t in TASKS]
    assert len(names) >= 12 and len(set(names)) == len(names)
    assert all(task_named(n) for n in QUICK)


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.name)
def test_a_task_is_not_solved_by_doing_nothing_or_answering_beside_the_point(
    task: Task, tmp_path: Path
) -> None:
    task.setup(tmp_path)
    assert not task.check("", tmp_path)
    assert not task.check("I could not find it. (no reply)", tmp_path)


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.name)
def test_a_task_is_solved_by_its_reference_solution(task: Task, tmp_path: Path) -> None:
    task.setup(tmp_path)
    answer = task.solve(tmp_path)
    assert task.check(answer, tmp_path)


def test_a_number_question_is_wrong_when_the_answer_also_states_a_wrong_count(
    tmp_path: Path,
) -> None:
    task = task_named("run-tests")
    task.setup(tmp_path)
    assert task.check("2 tests fail, 3 pass.", tmp_path)
    assert not task.check("1 test fails.", tmp_path)
    assert not task.check("Either 2 or 4 tests fail.", tmp_path)
    # pytest's own summary line: its duration is a number of its own, not a count of 1.
    assert task.check("2 failed, 3 passed in 1.63s", tmp_path)


def test_the_table_counts_only_finished_runs_as_correct_and_totals_them() -> None:
    rows = [
        EvalRow("a", "read", True, True, 2, 1, 10.0, 9.0, 0, "8042", ""),
        EvalRow("b", "edit", False, False, 8, 8, 50.0, 45.0, 1, "", "the agent hit the turn cap"),
    ]
    out = table(rows, "test")
    assert "| **total** | | 1/2 | **1/2** | 10 | 9 | 60 | 54 | |" in out
    assert "turn cap" in out
