"""Settings scaled to the embedded model on a small CPU (prefill is ~100 tokens/s on 2 cores).

Applied when the provider is `local`; any flag the user gives wins.
"""

from __future__ import annotations

__all__ = ["LOCAL_DEFAULTS"]

LOCAL_DEFAULTS: dict[str, int] = {
    "context_window": 8192,
    "compact_at": 6000,
    "max_turns": 15,
    "max_output_tokens": 512,
    "memory_init_tokens": 2500,
    "memory_update_tokens": 1500,
    "memory_max_tokens": 1500,
    "memory_section_tokens": 300,
    "memory_update_output_tokens": 512,
}
