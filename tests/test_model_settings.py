"""The model says what it needs: its window and recommended settings reach the agent.

`Agent(model)` lays what the caller set explicitly over what the model asks for, so the
library runs a model exactly as `tidemark run` does (the command line applies nothing of
its own). The local model runs on a llama.cpp stand-in here; the real one in
tests/test_local_cli.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.llama_standin import SlowUpdates
from tests.support.runs import read_events
from tidemark import Agent, ConfigError, ScriptedModel, Settings

pytestmark = pytest.mark.anyio

NUDGE = "You have not used any tool yet"


def _events(workspace: Path, name: str) -> list[dict[str, Any]]:
    return [e for e in read_events(workspace) if e["event"] == name]


def _answers_at_once() -> ScriptedModel:
    recommended = {"max_output_tokens": 512, "nudge_without_action": True}
    steps = [ScriptedModel.reply("It is fine."), ScriptedModel.reply("Still fine.")]
    return ScriptedModel(steps, context_window=32_000, recommended=recommended)


async def test_a_run_takes_the_window_and_the_settings_the_model_asks_for(tmp_path: Path) -> None:
    model = _answers_at_once()
    result = await Agent(model, settings=Settings(workspace=tmp_path)).run("check it")
    first, second = model.requests
    assert first.max_tokens == 512 and first.tool_choice == "any"  # made to act
    assert NUDGE in second.messages[-1].text and result.turns == 2
    # The threshold follows the model's 32,000-token window: 3/4 of it.
    assert {e["threshold"] for e in _events(tmp_path, "turn_started")} == {24_000}


async def test_what_the_caller_sets_wins_over_what_the_model_asks_for(tmp_path: Path) -> None:
    model = _answers_at_once()
    settings = Settings(
        workspace=tmp_path, context_window=16_000, max_output_tokens=900, nudge_without_action=False
    )
    agent = Agent(model, settings=settings)
    result = await agent.run("check it")
    (request,) = model.requests
    assert request.max_tokens == 900 and request.tool_choice == "auto"
    assert result.final_text == "It is fine." and result.turns == 1
    assert {e["threshold"] for e in _events(tmp_path, "turn_started")} == {12_000}
    assert agent.settings.max_turns == Settings().max_turns  # neither set it: the default


def test_a_threshold_past_the_models_window_is_a_config_error_naming_no_flag(
    tmp_path: Path,
) -> None:
    model = ScriptedModel(context_window=8_192)
    with pytest.raises(ConfigError, match="compact_at 20000 is larger than the context window"):
        Agent(model, settings=Settings(workspace=tmp_path, compact_at=20_000))


# -- the embedded local model (on a llama.cpp stand-in) ----------------------------------------


def _local_model(tmp_path: Path, **options: Any) -> Any:
    pytest.importorskip("llama_cpp", reason="needs the 'local' extra: pip install '.[local]'")
    from tidemark.providers.local import LocalModel, local_defaults

    gguf = tmp_path / "standin.gguf"
    gguf.write_bytes(b"GGUF" + bytes(64))
    return LocalModel(gguf, engine=SlowUpdates(), **options), local_defaults()


async def test_an_agent_on_the_local_model_runs_with_its_small_cpu_settings(
    tmp_path: Path,
) -> None:
    model, defaults = _local_model(tmp_path)
    workspace = tmp_path / "repo"
    workspace.mkdir()
    try:
        agent = Agent(model, settings=Settings(workspace=workspace, max_turns=3))
        for name, value in defaults.items():
            if name != "max_turns":
                assert getattr(agent.settings, name) == value, name
        assert agent.settings.max_turns == 3  # the caller's
        result = await agent.run("say what this repository is")
    finally:
        await model.aclose()
    # The stand-in answers without a tool call: the small model is told to use one.
    transcript = (result.paths.transcript).read_text()
    assert NUDGE in transcript and result.turns == 2
    assert {e["threshold"] for e in _events(workspace, "turn_started")} == {6000}


async def test_a_smaller_local_window_scales_the_threshold_the_model_asks_for(
    tmp_path: Path,
) -> None:
    model, _ = _local_model(tmp_path, context_window=4096)
    try:
        agent = Agent(model, settings=Settings(workspace=tmp_path))
        assert (agent.settings.context_window, agent.settings.compact_at) == (4096, 3072)
        # A window the caller sets, with no threshold of its own, drops the model's 3072.
        narrower = Agent(model, settings=Settings(workspace=tmp_path, context_window=2048))
        assert narrower.settings.compact_at is None
        assert narrower.settings.compaction_threshold == 1536
    finally:
        await model.aclose()
