"""tidemark: a runtime for tool-using coding agents whose context never stalls.

``from tidemark import Agent, Settings, tool`` is the library's surface: the agent, its
settings, the tool decorator and tool types, the model classes, the scripted test model and
the error types. The runtime lives in the repository's ``agent/`` folder and the tool
system in ``tools/``; both install as this one package (``tidemark.tools``).
"""

from tidemark.config import Settings
from tidemark.errors import (
    ConfigError,
    ContextTooLongError,
    ModelError,
    NoAnswerError,
    ProviderUnavailableError,
    SessionNotFoundError,
    TidemarkError,
    TurnLimitError,
    WorkspaceError,
)
from tidemark.events import EVENT_KEYS, EventLog, EventSubscriber
from tidemark.loop import Agent, Outcome, RunResult
from tidemark.messages import (
    ImageBlock,
    Message,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
    Usage,
)
from tidemark.model import Model, ModelRequest, ModelResponse, StopReason, ToolSpec
from tidemark.providers.anthropic import AnthropicModel
from tidemark.providers.local import LocalModel
from tidemark.testing import ScriptedModel
from tidemark.tools import Tool, ToolContext, ToolError, ToolImage, ToolOutput, Toolset, tool

__all__ = [
    "EVENT_KEYS",
    "Agent",
    "AnthropicModel",
    "ConfigError",
    "ContextTooLongError",
    "EventLog",
    "EventSubscriber",
    "ImageBlock",
    "LocalModel",
    "Message",
    "Model",
    "ModelError",
    "ModelRequest",
    "ModelResponse",
    "NoAnswerError",
    "Outcome",
    "ProviderUnavailableError",
    "RunResult",
    "ScriptedModel",
    "SessionNotFoundError",
    "Settings",
    "StopReason",
    "TextBlock",
    "ThinkingBlock",
    "TidemarkError",
    "Tool",
    "ToolContext",
    "ToolError",
    "ToolImage",
    "ToolOutput",
    "ToolResultBlock",
    "ToolSpec",
    "ToolUseBlock",
    "Toolset",
    "TurnLimitError",
    "Usage",
    "WorkspaceError",
    "tool",
]
