"""Settings: one model, every default written once here (the CLI's flags and their help
are made from these fields)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tidemark.errors import ConfigError

__all__ = ["Settings"]


class Settings(BaseModel):
    # The docstrings are the fields' descriptions: the command line's help is made of them.
    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    workspace: Path = Field(default_factory=Path.cwd)
    """Directory the agent works in; tools cannot touch anything outside it."""

    max_turns: int = Field(default=50, ge=1)
    """Model turns before the run stops with exit code 1."""

    max_output_tokens: int = Field(default=8192, ge=1)
    """Output budget of one agent turn."""

    context_window: int = Field(default=200_000, ge=1000)
    """The model's context window in tokens."""

    compact_at: int | None = Field(default=None, ge=1000)
    """Estimated input tokens of the next request at which compaction happens.
    Default: the window - 33000, or 3/4 of the window when it is 66000 or less."""

    memory_init_tokens: int = Field(default=10_000, ge=0)
    """Context size before the first memory update."""

    memory_update_tokens: int = Field(default=5_000, ge=0)
    """Context growth between memory updates."""

    memory_tool_calls: int = Field(default=3, ge=0)
    """Tool calls between memory updates; a natural pause starts one sooner."""

    memory_max_tokens: int = Field(default=12_000, ge=500)
    """Size limit of the whole memory document."""

    memory_section_tokens: int = Field(default=2_000, ge=100)
    """Size limit of one memory section."""

    memory_update_output_tokens: int = Field(default=4_096, ge=256)
    """Output budget of one memory update request."""

    memory_update_timeout: float = Field(default=300.0, gt=0)
    """Seconds one memory update may take before it is abandoned (the previous memory stays).
    Also bounds the wait for the session memory at a normal finish."""

    compaction_wait_ms: int = Field(default=0, ge=0)
    """How long compaction may wait for an in-flight memory update, in milliseconds;
    0: never."""

    tool_timeout: float = Field(default=120.0, gt=0)
    """Default per-call tool timeout in seconds."""

    auto_approve: bool = False
    """Run tools that write or execute without asking (--yes)."""

    nudge_without_action: bool = False
    """Tell a model that answers before it has used any tool to use one (once), and make its
    first reply call a tool. Small models need it; a model that does asks for it."""

    @model_validator(mode="after")
    def _check_compact_at(self) -> Settings:
        if self.compact_at is not None and self.compact_at > self.context_window:
            raise ValueError(
                f"compact_at {self.compact_at} is larger than the context window "
                f"{self.context_window}: lower compact_at or raise context_window"
            )
        return self

    def over(self, defaults: Mapping[str, Any]) -> Settings:
        """These settings laid over `defaults` (what a model recommends): every field set
        explicitly here wins, the others take the default's value when it has one.

        A recommended `compact_at` that does not fit an explicitly set window is left out
        (the threshold then follows the window). Raises ConfigError (one line, naming the
        fields) when the combination is invalid.
        """
        explicit = {name: getattr(self, name) for name in self.model_fields_set}
        values = {**defaults, **explicit}
        compact_at = values.get("compact_at")
        if (
            "compact_at" not in explicit
            and "context_window" in explicit
            and compact_at is not None
            and compact_at > explicit["context_window"]
        ):
            del values["compact_at"]
        try:
            return Settings.model_validate(values)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            message = str(first["msg"]).removeprefix("Value error, ")
            raise ConfigError(f"{where}: {message}" if where else message) from None

    @property
    def compaction_threshold(self) -> int:
        if self.compact_at is not None:
            return self.compact_at
        if self.context_window > 66_000:
            return self.context_window - 33_000
        return self.context_window * 3 // 4

    @property
    def tail_min_tokens(self) -> int:
        return min(10_000, self.compaction_threshold // 4)

    @property
    def tail_max_tokens(self) -> int:
        return min(40_000, self.compaction_threshold // 2)

    @property
    def tail_covered_max_tokens(self) -> int:
        """How far the kept tail extends back over messages the memory already covers.

        The memory holds them, so keeping them verbatim too buys little and costs every
        later turn (and the cache rewrite at compaction): only to the tail's minimum.
        Messages the memory does not cover are always kept.
        """
        return self.tail_min_tokens

    @property
    def memory_limit_tokens(self) -> int:
        """The memory's size limit, scaled so memory + tail fit under a small --compact-at."""
        return max(500, min(self.memory_max_tokens, self.compaction_threshold // 4))

    @property
    def memory_section_limit_tokens(self) -> int:
        return max(100, min(self.memory_section_tokens, self.memory_limit_tokens // 4))

    @property
    def compaction_target(self) -> int:
        """The whole next request after compaction should fit in this."""
        return self.compaction_threshold // 2
