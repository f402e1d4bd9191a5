"""Knowing that a consumer group has processed everything on a topic.

The coordinator commits a Kafka offset only after the database transaction that processed the
record has committed. So once its group's committed offsets reach a topic's end offsets (as of
asking), every record sent before has had its effect: a test can then look for what did *not*
happen without waiting a while and hoping that was long enough.
"""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from tests.support.waiting import eventually

__all__ = ["committed_to_end"]


async def committed_to_end(bootstrap_servers: str, group_id: str, topic: str) -> None:
    """Wait until ``group_id`` has committed every partition of ``topic`` up to its end."""
    # Subscribed without a group: assigned every partition of the topic, committing nothing.
    probe = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap_servers, group_id=None)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await probe.start()
    try:
        await admin.start()
        try:
            assigned = await eventually(probe.assignment, what=f"the partitions of {topic}")
            partitions = sorted(assigned, key=lambda tp: tp.partition)
            ends = await probe.end_offsets(partitions)

            async def caught_up() -> bool:
                committed = await admin.list_consumer_group_offsets(group_id, partitions=partitions)
                behind = {
                    tp.partition: (committed[tp].offset if tp in committed else None, end)
                    for tp, end in ends.items()
                    if end > 0 and (tp not in committed or committed[tp].offset < end)
                }
                assert not behind, f"(committed, end) per partition behind: {behind}"
                return True

            await eventually(caught_up, interval=0.2, what=f"group {group_id} to consume {topic}")
        finally:
            await admin.close()
    finally:
        await probe.stop()
