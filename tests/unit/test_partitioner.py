"""Kafka's key partitioning: the same partitions as aiokafka's (and the Java client's)."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from service_sdk.partitioner import KeyPartitioner, murmur2


def _signed(value: int) -> int:
    return value - (1 << 32) if value >= 1 << 31 else value


@pytest.mark.parametrize(
    ("key", "java"),
    [
        # The cases of Kafka's own UtilsTest.testMurmur2 (Java ints, signed).
        (b"21", -973932308),
        (b"foobar", -790332482),
        (b"a-little-bit-long-string", -985981536),
        (b"a-little-bit-longer-string", -1486304829),
        (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
        (b"abc", 479470107),
    ],
)
def test_murmur2_matches_the_java_client(key: bytes, java: int) -> None:
    assert _signed(murmur2(key)) == java


@given(st.binary(max_size=200))
def test_murmur2_matches_aiokafka(data: bytes) -> None:
    assert murmur2(data) == aiokafka_murmur2(data)


@given(st.binary(min_size=1, max_size=64), st.integers(min_value=1, max_value=300))
def test_a_key_goes_where_aiokafka_puts_it(key: bytes, count: int) -> None:
    partitions = list(range(count))
    ours = KeyPartitioner(remembered=4)
    assert ours(key, partitions, partitions) == DefaultPartitioner()(key, partitions, partitions)
    # Remembered: the same answer again, and for another partition count.
    assert ours(key, partitions, partitions) == DefaultPartitioner()(key, partitions, partitions)
    fewer = partitions[: max(1, count // 2)]
    assert ours(key, fewer, fewer) == DefaultPartitioner()(key, fewer, fewer)


def test_a_keyless_record_goes_to_an_available_partition() -> None:
    partitioner = KeyPartitioner()
    assert {partitioner(None, [0, 1, 2], [2]) for _ in range(20)} == {2}
    assert partitioner(None, [0, 1, 2], []) in {0, 1, 2}
