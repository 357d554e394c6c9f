"""Model providers: Anthropic (Messages API) and the embedded local model."""

from __future__ import annotations

import os
from typing import Literal

from tidemark.model import Model

__all__ = ["ProviderName", "default_provider", "make_model"]

ProviderName = Literal["anthropic", "local"]


def default_provider() -> ProviderName:
    """`anthropic` when an API key or base URL is set, else the embedded local model."""
    if os.environ.get("ANTHROPIC_API_KEY") or os.environ.get("ANTHROPIC_BASE_URL"):
        return "anthropic"
    return "local"


def make_model(
    provider: ProviderName, model: str | None, context_window: int | None = None
) -> Model:
    """The provider's model; with `context_window` None, the model's own window."""
    if provider == "anthropic":
        from tidemark.providers.anthropic import DEFAULT_MODEL, AnthropicModel

        if context_window is None:
            return AnthropicModel(model or DEFAULT_MODEL)
        return AnthropicModel(model or DEFAULT_MODEL, context_window=context_window)
    from pathlib import Path

    from tidemark.providers.local import LocalModel

    path = Path(model) if model else None
    if context_window is None:
        return LocalModel(path)
    return LocalModel(path, context_window=context_window)
