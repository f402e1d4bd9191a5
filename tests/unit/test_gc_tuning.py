"""The long-running commands tune the cyclic garbage collector once started up."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from coordinator.cli.common import YOUNG_COLLECTION_THRESHOLD, freeze_startup_heap


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored_gc")
def test_the_startup_heap_is_frozen_and_young_collections_are_rarer() -> None:
    survivor = [object()]  # alive at start-up, like a module's objects
    _, older, oldest = gc.get_threshold()
    freeze_startup_heap()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (YOUNG_COLLECTION_THRESHOLD, older, oldest)
    assert not any(o is survivor for o in gc.get_objects())  # out of every later scan
