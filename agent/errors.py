"""The errors tidemark raises, as one small tree.

    TidemarkError              base; the CLI prints its message on one line and exits 2
    ├── ConfigError            bad settings or flags (exit 2)
    ├── WorkspaceError         workspace missing (exit 2)
    │   └── SessionNotFoundError  no such session to resume or inspect
    ├── ModelError             the model failed after retries (exit 1)
    │   └── ContextTooLongError  the request exceeds the model's window
    ├── TurnLimitError         the agent hit --max-turns (exit 1)
    ├── NoAnswerError          the run ended without an answer: empty reply, repeated calls (exit 1)
    └── ProviderUnavailableError  the provider cannot be loaded (extra/model missing, exit 2)

A run that fails raises one of these, never an exception group, with `session_id` set to
the session it ended (so it can be resumed). Messages speak of the library, not of the
command line: the CLI adds its own hints (which command to run next) from the error's type
and fields. Tools raise `tidemark.tools.ToolError`; the model sees it as an `is_error` tool
result and the run goes on. Anything else escaping is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ContextTooLongError",
    "ModelError",
    "NoAnswerError",
    "ProviderUnavailableError",
    "SessionNotFoundError",
    "TidemarkError",
    "TurnLimitError",
    "WorkspaceError",
]


class TidemarkError(Exception):
    exit_code = 2

    def __init__(self, message: str, *, session_id: str | None = None) -> None:
        super().__init__(message)
        # The session a failed run ended, if it got that far: it can be resumed.
        self.session_id = session_id


class ConfigError(TidemarkError):
    pass


class WorkspaceError(TidemarkError):
    pass


class SessionNotFoundError(WorkspaceError):
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
