"""Whether a repeated HTTP start (same saga id or ``Idempotency-Key``) carries the same data.

The comparison itself is :func:`coordinator.core.starts.starts_alike`, shared with the batch
processor, which refuses a conflicting start on Kafka the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from coordinator.core.starts import START_KINDS, starts_alike
from coordinator.ops.actions import SagaTimeline

__all__ = ["started_with", "starts_alike"]


def started_with(timeline: SagaTimeline) -> Mapping[str, Any]:
    """The data the saga started with: its first ``started``/``queued`` history entry."""
    for record in timeline.history:
        data = record.detail.get("data") if record.kind in START_KINDS else None
        if isinstance(data, Mapping):
            return data
    return timeline.instance.data
