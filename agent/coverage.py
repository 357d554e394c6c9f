"""What a memory update must carry verbatim, so that its boundary claims only what it saw.

An update's request reuses the agent's context as its prefix (the shared prompt cache). When
compaction shortened content in the part the memory does not cover yet (tombstoned tool
results, stubbed tool inputs or assistant texts), or dropped it (a blocking summary), the
prefix no longer holds that content. The originals then travel after the cached prefix, in
the update instruction; and when they do not all fit, the update claims only as far as the
originals it carries. Pure functions: no I/O, no clock.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tidemark.boundaries import is_safe_cut
from tidemark.messages import Message, TextBlock, ToolResultBlock, ToolUseBlock

__all__ = ["Original", "claimable_boundary", "originals_needed", "render_originals"]


@dataclass(frozen=True)
class Original:
    """A transcript message whose content the update's prefix lacks (in part or whole)."""

    position: int  # in the transcript
    message: Message
    blocks: tuple[int, ...]  # indexes of its content blocks the prefix did not carry


def originals_needed(
    prefix: Sequence[Message],
    transcript: Sequence[Message],
    positions: dict[str, int],
    *,
    first: int,
    last: int,
) -> list[Original]:
    """Transcript messages in ``first..last`` whose content ``prefix`` does not hold verbatim.

    A message is compared block by block with its copy in the prefix (same id); a message
    with no copy there is needed whole.
    """
    sent = {m.id: m for m in prefix if m.id in positions}
    out: list[Original] = []
    for position in range(max(first, 0), min(last, len(transcript) - 1) + 1):
        message = transcript[position]
        copy = sent.get(message.id)
        if copy is None:
            out.append(Original(position, message, tuple(range(len(message.content)))))
            continue
        differ = tuple(
            k
            for k, block in enumerate(message.content)
            if k >= len(copy.content) or copy.content[k] != block
        )
        if differ:
            out.append(Original(position, message, differ))
    return out


def _tool_names(transcript: Sequence[Message], upto: int) -> dict[str, ToolUseBlock]:
    return {u.id: u for m in transcript[: upto + 1] for u in m.tool_uses}


def render_originals(originals: Sequence[Original], transcript: Sequence[Message]) -> str:
    """The originals as text for the update instruction, every string value verbatim."""
    if not originals:
        return ""
    uses = _tool_names(transcript, originals[-1].position)
    chunks: list[str] = []
    for original in originals:
        for k in original.blocks:
            block = original.message.content[k]
            if isinstance(block, ToolResultBlock):
                use = uses.get(block.tool_use_id)
                name = use.name if use is not None else "tool"
                status = ' is_error="true"' if block.is_error else ""
                chunks.append(
                    f'<tool-result id="{block.tool_use_id}" tool="{name}"{status}>\n'
                    f"{block.text_with_placeholders()}\n</tool-result>"
                )
            elif isinstance(block, ToolUseBlock):
                fields = "\n".join(
                    f'<input name="{key}">\n'
                    f"{value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)}"
                    "\n</input>"
                    for key, value in block.input.items()
                )
                chunks.append(
                    f'<tool-call id="{block.id}" tool="{block.name}">\n{fields}\n</tool-call>'
                )
            elif isinstance(block, TextBlock):
                role = original.message.role
                chunks.append(
                    f'<{role}-text message="{original.message.id}">\n{block.text}\n</{role}-text>'
                )
    return (
        "Parts of the conversation above were shortened to save context before your notes "
        "covered them. Here they are in full; use them for the memory:\n"
        "<full-content>\n" + "\n".join(chunks) + "\n</full-content>"
    )


def claimable_boundary(
    transcript: Sequence[Message],
    originals: Sequence[Original],
    *,
    covered: int,
    boundary: int,
    room: int,
    estimate: Callable[[str], int],
) -> tuple[int | None, list[Original]]:
    """How far an update may claim when only ``room`` tokens of originals fit.

    Returns (the last transcript position it may claim, or None when it can claim nothing
    past ``covered``; the originals it must carry for that). The position is always a safe
    summary boundary: no pending tool call, no tool pair split.
    """
    carried: list[Original] = []
    used = 0
    limit = boundary
    for original in originals:
        cost = estimate(render_originals([original], transcript))
        if used + cost > room:
            limit = original.position - 1
            break
        used += cost
        carried.append(original)
    for j in range(min(limit, boundary), covered, -1):
        if not transcript[j].tool_uses and is_safe_cut(transcript, j + 1):
            return j, [o for o in carried if o.position <= j]
    return None, []
