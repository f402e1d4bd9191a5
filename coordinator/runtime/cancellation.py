"""Telling a failure from a cancellation in loops that retry on failure."""

from __future__ import annotations

import asyncio

__all__ = ["cancelling"]


def cancelling() -> bool:
    """True when the current task has been asked to cancel.

    A cancelled database call can surface as an ordinary exception (the connection is left
    invalid); a loop that retries on ``Exception`` must give up instead of retrying then.
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
