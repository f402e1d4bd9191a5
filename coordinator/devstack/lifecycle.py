"""The ``async with`` support every launcher shares: start on entry, stop on exit."""

from __future__ import annotations

from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["Lifecycle"]


class Lifecycle:
    """Base of components with ``start()`` and an idempotent ``stop()``."""

    async def start(self) -> None:
        """Start the component."""
        raise NotImplementedError

    async def stop(self) -> None:
        """Stop the component. Idempotent."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
