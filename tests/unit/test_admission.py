"""Admission limits and the in-flight count they are checked against (pure)."""

from __future__ import annotations

from coordinator.config import AdmissionSettings
from coordinator.core.admission import AdmissionLimits, InFlight


def test_no_cap_means_room_for_everything() -> None:
    limits = AdmissionLimits()
    assert limits.unlimited
    counted = InFlight(total=10_000, by_type={"order": 10_000}, by_service={"inventory": 10_000})
    assert counted.has_room(limits, "order", "inventory")
    assert counted.room(limits) is None


def test_the_global_cap() -> None:
    limits = AdmissionLimits(max_in_flight=2)
    counted = InFlight()
    assert counted.room(limits) == 2
    for _ in range(2):
        assert counted.has_room(limits, "order", "inventory")
        counted.add("order", "inventory")
    assert not counted.has_room(limits, "trip", "flights")
    assert counted.room(limits) == 0


def test_a_type_cap_holds_back_only_that_type() -> None:
    limits = AdmissionLimits(max_in_flight_per_type={"order": 1})
    counted = InFlight()
    counted.add("order", "inventory")
    assert not counted.has_room(limits, "order", "inventory")
    assert counted.has_room(limits, "trip", "flights")


def test_a_service_cap_holds_back_sagas_whose_first_command_goes_there() -> None:
    limits = AdmissionLimits(
        max_outstanding_per_service={"inventory": 1}, default_max_outstanding_per_service=2
    )
    counted = InFlight()
    counted.add("order", "inventory")
    assert not counted.has_room(limits, "order", "inventory")
    assert counted.has_room(limits, "trip", "flights")
    counted.add("trip", "flights")
    counted.add("trip", "flights")
    assert not counted.has_room(limits, "trip", "flights")
    assert limits.service_cap("flights") == 2
    assert limits.service_cap("inventory") == 1


def test_settings_become_the_cores_limits() -> None:
    settings = AdmissionSettings(
        max_in_flight=10, max_in_flight_per_type={"order": 4}, default_max_outstanding_per_service=3
    )
    limits = settings.limits()
    assert (limits.max_in_flight, limits.max_in_flight_per_type["order"]) == (10, 4)
    assert limits.service_cap("payment") == 3
    assert not limits.unlimited
    assert AdmissionSettings(max_in_flight=None).limits().unlimited
