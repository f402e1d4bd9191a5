"""An optional delay in every example handler: a slow participant, on demand.

``saga participant NAME --handler-delay-ms 20`` (and ``saga demo --handler-delay-ms``) make
each command take that much longer, so a burst builds queues at the participants — how the
overload tests show that queueing never turns into timeouts or cancellations.
"""

from __future__ import annotations

import asyncio

__all__ = ["Pace", "pace"]


class Pace:
    """Awaited at the start of every example handler."""

    def __init__(self) -> None:
        self.delay_s = 0.0

    async def __call__(self, commands: int = 1) -> None:
        """Wait the delay of ``commands`` commands (a batch handler waits for all of its)."""
        if self.delay_s > 0:
            await asyncio.sleep(self.delay_s * commands)


pace = Pace()
"""The process's one pace (a participant process runs one service)."""
