"""Admission control: how many sagas may be in flight, decided without I/O.

A start beyond a cap is not refused: the saga is created QUEUED and let go (FIFO) when
capacity frees up. Kafka is the first queue (``saga.requests`` is read only while the QUEUED
backlog is small), the QUEUED rows the second, so a spike waits instead of turning into
timeouts at the participants.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["AdmissionLimits", "InFlight"]


@dataclass(frozen=True)
class AdmissionLimits:
    """Caps on work in flight; None means no cap.

    Attributes:
        max_in_flight: Sagas RUNNING or COMPENSATING, all types together.
        max_in_flight_per_type: The same, per saga type.
        max_outstanding_per_service: Sagas awaiting a command of that service.
        default_max_outstanding_per_service: The cap of services not named above.
    """

    max_in_flight: int | None = None
    max_in_flight_per_type: Mapping[str, int] = field(default_factory=dict)
    max_outstanding_per_service: Mapping[str, int] = field(default_factory=dict)
    default_max_outstanding_per_service: int | None = None

    @property
    def unlimited(self) -> bool:
        """No cap at all: admission need not count anything."""
        return (
            self.max_in_flight is None
            and not self.max_in_flight_per_type
            and not self.max_outstanding_per_service
            and self.default_max_outstanding_per_service is None
        )

    def service_cap(self, service: str) -> int | None:
        """The cap of commands outstanding at ``service``."""
        return self.max_outstanding_per_service.get(
            service, self.default_max_outstanding_per_service
        )


@dataclass
class InFlight:
    """Sagas in flight, counted in one place: in total, by type and by awaited service."""

    total: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    by_service: dict[str, int] = field(default_factory=dict)

    def has_room(self, limits: AdmissionLimits, saga_type: str, service: str) -> bool:
        """Whether one more saga of ``saga_type`` whose first command goes to ``service`` fits
        (``""``: its first stage sends no participant a command)."""
        if limits.max_in_flight is not None and self.total >= limits.max_in_flight:
            return False
        type_cap = limits.max_in_flight_per_type.get(saga_type)
        if type_cap is not None and self.by_type.get(saga_type, 0) >= type_cap:
            return False
        if not service:
            return True  # it starts with a timer, a wait or a child saga: no participant's cap
        service_cap = limits.service_cap(service)
        return service_cap is None or self.by_service.get(service, 0) < service_cap

    def add(self, saga_type: str, service: str) -> None:
        """Count one more saga in flight."""
        self.total += 1
        self.by_type[saga_type] = self.by_type.get(saga_type, 0) + 1
        self.by_service[service] = self.by_service.get(service, 0) + 1

    def room(self, limits: AdmissionLimits) -> int | None:
        """How many more sagas fit under the global cap (None: no global cap)."""
        if limits.max_in_flight is None:
            return None
        return max(limits.max_in_flight - self.total, 0)
