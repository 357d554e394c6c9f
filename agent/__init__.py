"""tidemark: a runtime for tool-using coding agents whose context never stalls."""

from agent.config import Settings
from agent.errors import (
    ConfigError,
    ContextTooLongError,
    ModelError,
    ProviderUnavailableError,
    TidemarkError,
    TurnLimitError,
    WorkspaceError,
)
from agent.events import EVENT_KEYS, EventLog
from agent.loop import Agent, RunResult
from agent.messages import Message, TextBlock, ThinkingBlock, ToolResultBlock, ToolUseBlock, Usage
from agent.model import Model, ModelRequest, ModelResponse, ToolSpec
from agent.testing import ScriptedModel

__all__ = [
    "EVENT_KEYS",
    "Agent",
    "ConfigError",
    "ContextTooLongError",
    "EventLog",
    "Message",
    "Model",
    "ModelError",
    "ModelRequest",
    "ModelResponse",
    "ProviderUnavailableError",
    "RunResult",
    "ScriptedModel",
    "Settings",
    "TextBlock",
    "ThinkingBlock",
    "TidemarkError",
    "ToolResultBlock",
    "ToolSpec",
    "ToolUseBlock",
    "TurnLimitError",
    "Usage",
    "WorkspaceError",
]
