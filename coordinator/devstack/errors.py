"""Errors raised by the dev stack.

The tree::

    DevStackError                  root of everything the dev stack raises
    ├── DevStackConfigError        a SAGA_TEST_* setting is invalid or cannot be honoured
    ├── PrerequisiteMissingError   a tool the launcher needs (java, mvn, postgres) is missing
    └── ServiceStartError          a service did not come up (carries the tail of its log)
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "DevStackConfigError",
    "DevStackError",
    "PrerequisiteMissingError",
    "ServiceStartError",
]


class DevStackError(Exception):
    """Root of the dev stack's errors."""

    retriable: ClassVar[bool] = False


class DevStackConfigError(DevStackError):
    """A ``SAGA_TEST_*`` setting is invalid, or the forced choice cannot be honoured."""


class PrerequisiteMissingError(DevStackError):
    """A program the launcher needs is not installed."""


class ServiceStartError(DevStackError):
    """A service did not become ready; ``log_tail`` holds the end of its log."""

    def __init__(self, message: str, *, service: str, log_tail: str = "") -> None:
        if log_tail:
            message = f"{message}\n--- last lines of the {service} log ---\n{log_tail}"
        super().__init__(message)
        self.service = service
        self.log_tail = log_tail
