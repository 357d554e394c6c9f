"""Plot a session's context size over time from its events.jsonl, with compactions marked.

    python examples/plot_context.py .tidemark/sessions/<id>/events.jsonl -o context.png

The line is the context (input tokens of the next request) after each turn; each compaction
drops it at once (the sawtooth), labelled with its strategy and tokens before → after.
Green ticks are summary boundaries (a memory update committed), shaded spans are memory
updates in flight, the dashed line is the compaction threshold. Needs matplotlib.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt

STRATEGY_COLOURS = {
    "session_memory": "tab:orange",
    "tool_result_clearing": "tab:red",
    "full_summary": "tab:purple",
}


def read_events(path: Path) -> list[dict[str, Any]]:
    """Every event; damaged lines (a crash mid-write) are skipped with a warning."""
    events: list[dict[str, Any]] = []
    skipped = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            skipped += 1
            continue
        if isinstance(record, dict) and "timestamp" in record:
            events.append(record)  # pyright: ignore[reportUnknownArgumentType]
    if skipped:
        print(f"warning: {path.name}: skipped {skipped} damaged lines", file=sys.stderr)
    return events


def seconds(events: list[dict[str, Any]]) -> list[float]:
    stamps = [datetime.fromisoformat(e["timestamp"]) for e in events]
    start = stamps[0] if stamps else None
    return [(s - start).total_seconds() for s in stamps] if start else []


def plot(events: list[dict[str, Any]], out: Path, title: str) -> None:
    times = seconds(events)
    xs: list[float] = []
    ys: list[float] = []
    threshold: float | None = None
    fig, ax = plt.subplots(figsize=(12, 5))
    in_flight: dict[Any, float] = {}
    compactions = 0
    for t, e in zip(times, events, strict=True):
        name = e.get("event")
        if name == "turn_finished":
            xs.append(t)
            ys.append(e.get("context_tokens", e.get("input_tokens", 0) + e.get("output_tokens", 0)))
        elif name == "compaction":
            compactions += 1
            pre, post = e.get("pre_tokens", 0), e.get("post_tokens", 0)
            xs += [t, t]
            ys += [pre, post]
            threshold = e.get("threshold", threshold)
            colour = STRATEGY_COLOURS.get(e.get("strategy", ""), "black")
            ax.axvline(t, color=colour, alpha=0.5, linewidth=1)
            ax.annotate(
                f"{e.get('strategy')}\n{pre / 1000:.1f}k → {post / 1000:.1f}k",
                (t, pre),
                xytext=(4, 4),
                textcoords="offset points",
                fontsize=8,
                color=colour,
            )
        elif name == "memory_update_started":
            in_flight[e.get("update")] = t
        elif name in ("memory_update_committed", "memory_update_failed"):
            began = in_flight.pop(e.get("update"), None)
            if began is not None:
                failed = name == "memory_update_failed"
                ax.axvspan(began, t, color="tab:red" if failed else "tab:green", alpha=0.08)
        elif name == "summary_boundary":
            ax.axvline(t, color="tab:green", linestyle=":", linewidth=1)
            ax.annotate(
                f"boundary #{e.get('message_index')}",
                (t, 0),
                xytext=(3, 3),
                textcoords="offset points",
                fontsize=7,
                color="tab:green",
                rotation=90,
            )
    ax.plot(xs, ys, color="tab:blue", linewidth=1.5, label="context tokens")
    if threshold:
        ax.axhline(threshold, color="grey", linestyle="--", linewidth=1, label="compact at")
    ax.set_xlabel("seconds since the session started")
    ax.set_ylabel("tokens")
    ax.set_ylim(0, max([*ys, threshold or 0, 1]) * 1.15)  # room for the labels
    ax.set_title(f"{title}: {compactions} compactions")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("events", type=Path, help="a session's events.jsonl")
    parser.add_argument("-o", "--output", type=Path, default=Path("context.png"))
    args = parser.parse_args(argv)
    if not args.events.is_file():
        print(f"error: {args.events} does not exist", file=sys.stderr)
        return 2
    events = read_events(args.events)
    if not events:
        print(f"error: {args.events} holds no events", file=sys.stderr)
        return 2
    title = str(events[0].get("session_id", args.events.parent.name))
    plot(events, args.output, title)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
