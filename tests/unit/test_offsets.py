"""Offsets processed but not committed yet (service_sdk.offsets)."""

from __future__ import annotations

import pytest

from service_sdk.offsets import PendingOffsets


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_commit_falls_due_an_interval_after_the_first_pending_offset() -> None:
    clock = FakeClock()
    offsets = PendingOffsets(0.2, clock=clock)
    assert not offsets.due()
    assert offsets.wait_s(1.0) == 1.0
    offsets.add({"a": 5})
    clock.now += 0.15
    offsets.add({"a": 9, "b": 2})
    assert not offsets.due()
    assert offsets.wait_s(1.0) == pytest.approx(0.05)
    clock.now += 0.05
    assert offsets.due()
    assert offsets.take() == {"a": 9, "b": 2}
    assert not offsets
    assert not offsets.due()


def test_an_offset_never_goes_back() -> None:
    offsets = PendingOffsets(0.2)
    offsets.add({"a": 9})
    offsets.add({"a": 4})
    assert offsets.take() == {"a": 9}


def test_taking_some_partitions_leaves_the_others_pending() -> None:
    clock = FakeClock()
    offsets = PendingOffsets(0.2, clock=clock)
    offsets.add({"a": 1, "b": 2})
    assert offsets.take(["a"]) == {"a": 1}
    assert offsets
    clock.now += 0.2
    assert offsets.due()
    assert offsets.take() == {"b": 2}


def test_interval_zero_commits_after_every_batch() -> None:
    offsets = PendingOffsets(0)
    offsets.add({"a": 1})
    assert offsets.due()
    assert offsets.wait_s(0.2) == 0.0
    with pytest.raises(ValueError, match="negative"):
        PendingOffsets(-1)
