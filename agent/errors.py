"""The errors tidemark raises, as one small tree.

    TidemarkError              base; the CLI prints its message on one line and exits 2
    ├── ConfigError            bad settings or flags (exit 2)
    ├── WorkspaceError         workspace missing, unknown session (exit 2)
    ├── ModelError             the model failed after retries (exit 1)
    │   └── ContextTooLongError  the request exceeds the model's window
    ├── TurnLimitError         the agent hit --max-turns (exit 1)
    ├── NoAnswerError          the run ended without an answer: empty reply, repeated calls (exit 1)
    └── ProviderUnavailableError  the provider cannot be loaded (extra/model missing, exit 2)

Tools raise `tools.ToolError`; the model sees it as an `is_error` tool result and the run
goes on. Anything else escaping is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ContextTooLongError",
    "ModelError",
    "NoAnswerError",
    "ProviderUnavailableError",
    "TidemarkError",
    "TurnLimitError",
    "WorkspaceError",
]


class TidemarkError(Exception):
    exit_code = 2


class ConfigError(TidemarkError):
    pass


class WorkspaceError(TidemarkError):
    pass


class ProviderUnavailableError(TidemarkError):
    pass


class ModelError(TidemarkError):
    exit_code = 1


class ContextTooLongError(ModelError):
    pass


class TurnLimitError(TidemarkError):
    exit_code = 1


class NoAnswerError(TidemarkError):
    """The model stopped without answering (an empty reply, or the same calls over and over)."""

    exit_code = 1
