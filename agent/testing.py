"""Test doubles for users' and our own tests: a scripted model that needs no network.

    model = ScriptedModel([
        ScriptedModel.call("read_file", path="README.md"),
        ScriptedModel.reply("The README says hello."),
    ])
    result = await Agent(model, settings=Settings(workspace=tmp_path)).run("summarize")

Memory updates and compact requests are answered by `memory` / `compact` (callables of the
request) so scripted turns are consumed by turns only.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tidemark.messages import ContentBlock, StopReason, TextBlock, ToolUseBlock, Usage
from tidemark.model import ModelRequest, ModelResponse, TextSink
from tidemark.tokens import chars_estimate, message_text

__all__ = ["ScriptedModel"]

Step = ModelResponse | Callable[[ModelRequest], ModelResponse]
_ids = itertools.count(1)


class ScriptedModel:
    """Answers turns from a script; records every request it was sent."""

    def __init__(
        self,
        steps: Sequence[Step] = (),
        *,
        memory: Callable[[ModelRequest], ModelResponse] | None = None,
        compact: Callable[[ModelRequest], ModelResponse] | None = None,
        context_window: int = 200_000,
        recommended: Mapping[str, Any] | None = None,
    ) -> None:
        """`recommended`: the settings this model asks an agent for, as a provider's model
        does with `recommended_settings()` (e.g. ``{"nudge_without_action": True}``)."""
        self._steps = list(steps)
        self._recommended = dict(recommended or {})
        self._memory = memory
        self._compact = compact
        self._context_window = context_window
        self.requests: list[ModelRequest] = []

    @property
    def name(self) -> str:
        return "scripted"

    @property
    def context_window(self) -> int:
        return self._context_window

    def recommended_settings(self) -> dict[str, Any]:
        return dict(self._recommended)

    def estimate_tokens(self, text: str) -> int:
        return chars_estimate(text)

    @staticmethod
    def reply(text: str) -> ModelResponse:
        return _response([TextBlock(text=text)], "end_turn")

    @staticmethod
    def call(name: str, /, **tool_input: Any) -> ModelResponse:
        return ScriptedModel.calls((name, tool_input))

    @staticmethod
    def calls(*calls: tuple[str, dict[str, Any]]) -> ModelResponse:
        blocks: list[ContentBlock] = [
            ToolUseBlock(id=f"toolu_scripted_{next(_ids)}", name=n, input=i) for n, i in calls
        ]
        return _response(blocks, "tool_use")

    async def generate(
        self, request: ModelRequest, on_text: TextSink | None = None
    ) -> ModelResponse:
        self.requests.append(request)
        if request.purpose == "session-memory":
            if self._memory is None:
                return self.reply("# Current State\nWorking.")
            return self._memory(request)
        if request.purpose == "compact":
            if self._compact is None:
                return self.reply("Summary of earlier work.")
            return self._compact(request)
        step = self._steps.pop(0) if self._steps else self.reply("Done.")
        response = step(request) if callable(step) else step
        if on_text is not None:
            for block in response.content:
                if isinstance(block, TextBlock):
                    on_text(block.text)
        usage = Usage(
            input_tokens=sum(chars_estimate(message_text(m)) for m in request.messages),
            output_tokens=response.usage.output_tokens,
        )
        return response.model_copy(update={"usage": usage})

    async def aclose(self) -> None:
        pass


def _response(blocks: list[ContentBlock], stop_reason: StopReason) -> ModelResponse:
    output = sum(chars_estimate(b.model_dump_json()) for b in blocks)
    return ModelResponse(content=blocks, stop_reason=stop_reason, usage=Usage(output_tokens=output))
