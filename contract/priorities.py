"""Traffic classes and the Triton priority levels they map to: the contract between the exported configs and clients.

Two classes share one server: `interactive` (single sequences for a web page or a notebook; level 1, served first)
and `bulk` (whole proteomes; level 2). Triton's dynamic batcher orders its queue by level (1 is the highest) and
applies a queue policy per level; a request carries its level in Triton's `priority` request field and an optional
deadline in the `timeout` field (microseconds). Requests without a level get the configs' `default_priority_level`.
"""

from __future__ import annotations

from typing import Literal

PriorityClass = Literal["interactive", "bulk"]
PRIORITY_CLASSES: tuple[PriorityClass, ...] = ("interactive", "bulk")
PRIORITY_LEVELS: dict[str, int] = {"interactive": 1, "bulk": 2}
PRIORITY_LEVEL_COUNT = len(PRIORITY_LEVELS)


def priority_level(priority: str) -> int:
    """Triton's priority level of a traffic class (1 = served first)."""
    try:
        return PRIORITY_LEVELS[priority]
    except KeyError:
        raise ValueError(f"priority must be one of {PRIORITY_CLASSES}, got {priority!r}") from None
