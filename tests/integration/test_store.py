"""SagaStore against a real PostgreSQL migrated to head: round-trips, de-duplication,
optimistic versions, SKIP LOCKED claims, and statement counts that do not grow with a batch."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coordinator.core.errors import SagaConflictError
from coordinator.core.state import HistoryEntry, HistoryKind, SagaInstance, SagaStatus
from coordinator.store.database import create_engine
from coordinator.store.migrate import upgrade_database
from coordinator.store.records import HistoryRecord, OutboxMessage, OutboxRecord
from coordinator.store.saga_store import SagaStore
from coordinator.store.schema import outbox, saga_instance
from tests.support.outbox import mark_sent

T = TypeVar("T")

NOW = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)

DATA: dict[str, Any] = {
    "order_id": "o-1",
    "items": [{"sku": "A-1", "qty": 2, "price": 9.99}, {"sku": "ß-ü-€-😀", "qty": 1}],
    "nested": {"empty": {}, "list": [], "none": None, "flag": False, "deep": {"x": [1, [2, [3]]]}},
    "big": 2**63 + 7,
    "small": 1e-7,
    "negative": -0.5,
    "quote": 'he said "hi"\n\ttab \\ backslash',
}


def saga(saga_id: str, **changes: Any) -> SagaInstance:
    base = SagaInstance(
        saga_id=saga_id,
        saga_type="order",
        definition_version=3,
        status=SagaStatus.RUNNING,
        data=DATA,
        created_at=NOW,
        updated_at=NOW,
        current_step="reserve_inventory",
        command_id=f"cmd-{saga_id}",
        attempt=1,
        deadline_at=NOW + timedelta(seconds=30),
        traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )
    return dataclasses.replace(base, **changes)


async def queue(store: SagaStore, count: int) -> list[int]:
    """Ids of ``count`` outbox rows of saga ``s`` inserted (and committed) now."""
    return await in_tx(
        store, lambda c: store.insert_outbox(c, [message("s", n) for n in range(count)], NOW)
    )


def message(saga_id: str, n: int) -> OutboxMessage:
    return OutboxMessage(
        saga_id=saga_id,
        topic="inventory.commands",
        key=saga_id.encode(),
        value=b"\x00\xffpayload-" + str(n).encode(),
        headers={"message_id": f"m-{saga_id}-{n}", "saga_id": saga_id, "ünïcode": "✓"},
        message_id=f"m-{saga_id}-{n}",
    )


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    await upgrade_database(database_url)
    engine = create_engine(database_url, pool_size=4)
    yield engine
    await engine.dispose()


@pytest.fixture
def store(engine: AsyncEngine) -> SagaStore:
    return SagaStore(engine)


async def in_tx(store: SagaStore, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    async with store.engine.begin() as conn:
        return await work(conn)


@contextmanager
def count_statements(engine: AsyncEngine) -> Iterator[list[str]]:
    statements: list[str] = []

    def record(*args: Any) -> None:
        statements.append(args[2])

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


# -- saga instances -------------------------------------------------------------------------


async def test_insert_and_select_saga_round_trips_every_field(store: SagaStore) -> None:
    instance = saga(
        "s-1",
        completed_steps=("a", "b"),
        compensated_steps=("b",),
        failure_reason="card declined",
        status=SagaStatus.COMPENSATING,
    )

    inserted = await in_tx(store, lambda c: store.insert_sagas(c, [instance]))
    loaded = await in_tx(store, lambda c: store.select_saga(c, "s-1"))

    assert inserted == {"s-1"}
    assert loaded == dataclasses.replace(instance, version=1)
    assert loaded is not None
    assert loaded.data == DATA
    assert loaded.created_at.tzinfo is not None
    assert await in_tx(store, lambda c: store.select_saga(c, "nope")) is None


async def test_insert_sagas_twice_inserts_once(store: SagaStore) -> None:
    first = saga("s-1")
    again = saga("s-1", data={"other": True})

    assert await in_tx(store, lambda c: store.insert_sagas(c, [first, saga("s-2")])) == {
        "s-1",
        "s-2",
    }
    assert await in_tx(store, lambda c: store.insert_sagas(c, [again])) == set()
    assert await in_tx(store, lambda c: store.insert_sagas(c, [saga("s-3"), saga("s-3")])) == {
        "s-3"
    }

    loaded = await in_tx(store, lambda c: store.select_saga(c, "s-1"))
    assert loaded is not None
    assert loaded.data == DATA


async def test_select_sagas_for_update_returns_and_locks(store: SagaStore) -> None:
    await in_tx(store, lambda c: store.insert_sagas(c, [saga("b"), saga("a"), saga("c")]))

    async with store.engine.begin() as holder:
        locked = await store.select_sagas_for_update(holder, ["c", "a", "missing"])
        assert set(locked) == {"a", "c"}
        assert locked["a"] == dataclasses.replace(saga("a"), version=1)

        async with store.engine.begin() as other:
            await other.execute(sa.text("SET LOCAL lock_timeout = '200ms'"))
            with pytest.raises(DBAPIError, match="lock timeout"):
                await store.select_sagas_for_update(other, ["a"])

    assert await in_tx(store, lambda c: store.select_sagas_for_update(c, [])) == {}


async def test_update_sagas_saves_state_and_bumps_version(
    store: SagaStore, engine: AsyncEngine
) -> None:
    await in_tx(store, lambda c: store.insert_sagas(c, [saga("s-1"), saga("s-2")]))
    later = NOW + timedelta(minutes=5)

    async def transition(conn: AsyncConnection) -> None:
        read = await store.select_sagas_for_update(conn, ["s-1", "s-2"])
        await store.update_sagas(
            conn,
            [
                dataclasses.replace(
                    read["s-1"],
                    status=SagaStatus.COMPLETED,
                    current_step=None,
                    command_id=None,
                    deadline_at=None,
                    completed_steps=("a", "b", "c"),
                    data={**DATA, "receipt": "r-9"},
                    updated_at=later,
                ),
                dataclasses.replace(read["s-2"], attempt=2, updated_at=later),
            ],
        )

    await in_tx(store, transition)

    done = await in_tx(store, lambda c: store.select_saga(c, "s-1"))
    retried = await in_tx(store, lambda c: store.select_saga(c, "s-2"))
    assert done is not None
    assert retried is not None
    assert done.version == retried.version == 2
    assert done.status is SagaStatus.COMPLETED
    assert done.completed_steps == ("a", "b", "c")
    assert done.deadline_at is None
    assert done.data == {**DATA, "receipt": "r-9"}
    assert done.updated_at == later
    assert done.created_at == NOW
    assert retried.attempt == 2
    async with engine.connect() as conn:
        result = await conn.execute(
            sa.select(saga_instance.c.saga_id, saga_instance.c.completed_at)
        )
        completed_at = {row.saga_id: row.completed_at for row in result}
    assert completed_at == {"s-1": later, "s-2": None}


async def read_then_changed_elsewhere(store: SagaStore) -> dict[str, SagaInstance]:
    """Sagas s-1 and s-2 as read, after which another writer (say, the partition's previous
    owner) saved s-2."""
    await in_tx(store, lambda c: store.insert_sagas(c, [saga("s-1"), saga("s-2")]))
    read = await in_tx(store, lambda c: store.select_sagas_for_update(c, ["s-1", "s-2"]))
    await in_tx(
        store, lambda c: store.update_sagas(c, [dataclasses.replace(read["s-2"], attempt=5)])
    )
    return read


async def test_update_sagas_with_stale_version_raises_and_changes_nothing(
    store: SagaStore,
) -> None:
    read = await read_then_changed_elsewhere(store)

    with pytest.raises(SagaConflictError) as raised:
        await in_tx(
            store,
            lambda c: store.update_sagas(
                c,
                [
                    dataclasses.replace(read["s-1"], status=SagaStatus.FAILED),
                    dataclasses.replace(read["s-2"], status=SagaStatus.FAILED),
                ],
            ),
        )

    assert raised.value.saga_id == "s-2"
    assert SagaConflictError.retriable
    after = await in_tx(store, lambda c: store.select_sagas_for_update(c, ["s-1", "s-2"]))
    assert after["s-1"] == read["s-1"]
    assert after["s-2"].status is SagaStatus.RUNNING
    assert (after["s-2"].version, after["s-2"].attempt) == (2, 5)


async def test_update_of_a_missing_saga_is_a_conflict(store: SagaStore) -> None:
    with pytest.raises(SagaConflictError):
        await in_tx(store, lambda c: store.update_sagas(c, [saga("ghost", version=1)]))


async def test_update_sagas_rejects_the_same_saga_twice(store: SagaStore) -> None:
    await in_tx(store, lambda c: store.insert_sagas(c, [saga("s-1")]))
    twice = [saga("s-1", version=1), saga("s-1", version=1, attempt=3)]

    with pytest.raises(ValueError, match="more than once"):
        await in_tx(store, lambda c: store.update_sagas(c, twice))


async def test_write_changes_saves_appends_and_queues_in_one_statement(
    store: SagaStore, engine: AsyncEngine
) -> None:
    await in_tx(store, lambda c: store.insert_sagas(c, [saga("s-1"), saga("s-2")]))
    read = await in_tx(store, lambda c: store.select_sagas_for_update(c, ["s-1", "s-2"]))
    history = [
        ("s-1", HistoryEntry(HistoryKind.STEP_SUCCEEDED, step="a", detail={"n": 1})),
        ("s-2", HistoryEntry(HistoryKind.COMMAND_SENT, step="b")),
    ]
    messages = [message("s-1", 1), message("s-2", 1), message("s-1", 2)]

    with count_statements(engine) as statements:
        ids = await in_tx(
            store,
            lambda c: store.write_changes(
                c,
                [dataclasses.replace(r, attempt=3) for r in read.values()],
                history,
                messages,
                NOW,
            ),
        )

    assert len(statements) == 1
    assert ids == sorted(ids)
    assert len(ids) == 3
    after = await in_tx(store, lambda c: store.select_sagas_for_update(c, ["s-1", "s-2"]))
    assert {(a.version, a.attempt) for a in after.values()} == {(2, 3)}
    assert [
        (h.kind, h.step) for h in await in_tx(store, lambda c: store.select_history(c, "s-1"))
    ] == [("step_succeeded", "a")]
    taken = await in_tx(store, lambda c: store.take_outbox(c, limit=10))
    assert [(t.id, t.message_id) for t in taken] == [
        (i, m.message_id) for i, m in zip(ids, messages, strict=True)
    ]
    # Each part alone, and none at all.
    updated = dataclasses.replace(after["s-1"], attempt=4)
    assert await in_tx(store, lambda c: store.write_changes(c, [updated], [], [], NOW)) == []
    assert await in_tx(store, lambda c: store.write_changes(c, [], history[:1], [], NOW)) == []
    assert len(await in_tx(store, lambda c: store.write_changes(c, [], [], messages[:1], NOW))) == 1
    assert await in_tx(store, lambda c: store.write_changes(c, [], [], [], NOW)) == []


async def test_write_changes_with_a_stale_version_keeps_nothing(store: SagaStore) -> None:
    read = await read_then_changed_elsewhere(store)

    with pytest.raises(SagaConflictError) as raised:
        await in_tx(
            store,
            lambda c: store.write_changes(
                c,
                [dataclasses.replace(r, status=SagaStatus.FAILED) for r in read.values()],
                [("s-1", HistoryEntry(HistoryKind.FAILED))],
                [message("s-1", 1)],
                NOW,
            ),
        )

    assert raised.value.saga_id == "s-2"
    after = await in_tx(store, lambda c: store.select_sagas_for_update(c, ["s-1", "s-2"]))
    assert after["s-1"] == read["s-1"]
    assert await in_tx(store, lambda c: store.select_history(c, "s-1")) == []
    assert await in_tx(store, lambda c: store.take_outbox(c, limit=10)) == []


async def test_select_sagas_filters_and_pages_newest_first(store: SagaStore) -> None:
    instances = [
        saga(
            f"s-{i}", created_at=NOW + timedelta(seconds=i), saga_type="order" if i % 2 else "trip"
        )
        for i in range(6)
    ]
    instances[5] = dataclasses.replace(instances[5], status=SagaStatus.COMPLETED)
    await in_tx(store, lambda c: store.insert_sagas(c, instances))

    every = await in_tx(store, lambda c: store.select_sagas(c))
    orders = await in_tx(store, lambda c: store.select_sagas(c, saga_type="order"))
    running_orders = await in_tx(
        store, lambda c: store.select_sagas(c, status=SagaStatus.RUNNING, saga_type="order")
    )
    page = await in_tx(store, lambda c: store.select_sagas(c, limit=2, offset=1))

    assert [s.saga_id for s in every] == ["s-5", "s-4", "s-3", "s-2", "s-1", "s-0"]
    assert [s.saga_id for s in orders] == ["s-5", "s-3", "s-1"]
    assert [s.saga_id for s in running_orders] == ["s-3", "s-1"]
    assert [s.saga_id for s in page] == ["s-4", "s-3"]


async def test_count_sagas_by_status(store: SagaStore) -> None:
    await in_tx(
        store,
        lambda c: store.insert_sagas(
            c,
            [
                saga("a"),
                saga("b"),
                saga("c", status=SagaStatus.FAILED),
                saga("d", saga_type="trip", status=SagaStatus.COMPENSATED),
            ],
        ),
    )

    counts = await in_tx(store, store.count_sagas_by_status)

    assert counts == {
        ("order", SagaStatus.RUNNING): 2,
        ("order", SagaStatus.FAILED): 1,
        ("trip", SagaStatus.COMPENSATED): 1,
    }


# -- deadlines ------------------------------------------------------------------------------


async def test_claim_due_deadlines_picks_overdue_awaiting_sagas_in_deadline_order(
    store: SagaStore,
) -> None:
    await in_tx(
        store,
        lambda c: store.insert_sagas(
            c,
            [
                saga("late", deadline_at=NOW - timedelta(seconds=5)),
                saga("later", deadline_at=NOW - timedelta(seconds=50)),
                saga("exactly", deadline_at=NOW),
                saga("future", deadline_at=NOW + timedelta(seconds=1)),
                saga("none", deadline_at=None),
                saga(
                    "undoing",
                    status=SagaStatus.COMPENSATING,
                    deadline_at=NOW - timedelta(seconds=1),
                ),
                saga("done", status=SagaStatus.COMPLETED, deadline_at=NOW - timedelta(hours=1)),
            ],
        ),
    )

    due = await in_tx(store, lambda c: store.claim_due_deadlines(c, NOW, limit=10))
    first_two = await in_tx(store, lambda c: store.claim_due_deadlines(c, NOW, limit=2))

    assert [s.saga_id for s in due] == ["later", "late", "undoing", "exactly"]
    assert [s.saga_id for s in first_two] == ["later", "late"]


async def test_concurrent_deadline_claims_never_overlap(store: SagaStore) -> None:
    await in_tx(
        store,
        lambda c: store.insert_sagas(
            c, [saga(f"s-{i:02}", deadline_at=NOW - timedelta(seconds=i)) for i in range(20)]
        ),
    )

    async with store.engine.begin() as first, store.engine.begin() as second:
        a = await store.claim_due_deadlines(first, NOW, limit=8)
        b = await store.claim_due_deadlines(second, NOW, limit=100)

    assert len(a) == 8
    assert len(b) == 12
    assert {s.saga_id for s in a}.isdisjoint(s.saga_id for s in b)
    assert [s.deadline_at for s in b] == sorted(s.deadline_at for s in b if s.deadline_at)


# -- inbox ----------------------------------------------------------------------------------


async def test_insert_inbox_returns_only_unseen_ids(store: SagaStore) -> None:
    first = await in_tx(
        store, lambda c: store.insert_inbox(c, [("m-1", "s-1"), ("m-2", None), ("m-1", "s-1")], NOW)
    )
    second = await in_tx(
        store, lambda c: store.insert_inbox(c, [("m-2", None), ("m-3", "s-3")], NOW)
    )
    empty = await in_tx(store, lambda c: store.insert_inbox(c, [], NOW))

    assert first == {"m-1", "m-2"}
    assert second == {"m-3"}
    assert empty == set()


async def test_inbox_entries_roll_back_with_the_transaction(store: SagaStore) -> None:
    async def fail_after_recording(conn: AsyncConnection) -> None:
        await store.insert_inbox(conn, [("m-1", "s-1")], NOW)
        raise RuntimeError("the batch failed after recording the inbox")

    with pytest.raises(RuntimeError):
        await in_tx(store, fail_after_recording)

    assert await in_tx(store, lambda c: store.insert_inbox(c, [("m-1", "s-1")], NOW)) == {"m-1"}


# -- history --------------------------------------------------------------------------------


async def test_history_round_trips_in_order(store: SagaStore) -> None:
    await in_tx(store, lambda c: store.insert_sagas(c, [saga("s-1"), saga("s-2")]))
    entries = [
        ("s-1", HistoryEntry(HistoryKind.STARTED, message_id="start-1", detail={"by": "http"})),
        ("s-2", HistoryEntry(HistoryKind.STARTED)),
        ("s-1", HistoryEntry(HistoryKind.COMMAND_SENT, step="reserve", detail={"attempt": 1})),
    ]
    await in_tx(store, lambda c: store.insert_history(c, entries, NOW))
    await in_tx(
        store,
        lambda c: store.insert_history(
            c, [("s-1", HistoryEntry(HistoryKind.STEP_SUCCEEDED, step="reserve"))], NOW
        ),
    )

    history = await in_tx(store, lambda c: store.select_history(c, "s-1"))

    assert [(h.kind, h.step, h.message_id, h.detail) for h in history] == [
        ("started", None, "start-1", {"by": "http"}),
        ("command_sent", "reserve", None, {"attempt": 1}),
        ("step_succeeded", "reserve", None, {}),
    ]
    assert all(isinstance(h, HistoryRecord) and h.at == NOW for h in history)
    assert [h.id for h in history] == sorted(h.id for h in history)
    assert await in_tx(store, lambda c: store.select_history(c, "nobody")) == []


# -- outbox ---------------------------------------------------------------------------------


async def test_outbox_round_trip_take_restore_and_stats(store: SagaStore) -> None:
    messages = [message("s-1", 1), message("s-2", 1), message("s-1", 2)]
    ids = await in_tx(store, lambda c: store.insert_outbox(c, messages, NOW))

    assert ids == sorted(ids)
    assert len(set(ids)) == 3
    assert await in_tx(
        store, lambda c: store.select_outbox_stats(c, NOW + timedelta(seconds=7))
    ) == (3, 7.0)
    expected = [m.stored(i, NOW) for i, m in zip(ids, messages, strict=True)]
    async with store.engine.begin() as conn:
        taken = await store.take_outbox(conn, limit=10)
        # Two were published; the last one was not, and goes back as it was.
        await store.restore_outbox(conn, taken[2:])
    assert taken == expected
    assert await in_tx(store, lambda c: store.select_outbox_stats(c, NOW)) == (1, 0.0)
    assert await in_tx(store, lambda c: store.take_outbox(c, limit=10)) == expected[2:]
    assert await in_tx(store, lambda c: store.select_outbox_stats(c, NOW)) == (0, 0.0)
    assert await in_tx(store, lambda c: store.take_outbox(c, limit=10)) == []


async def test_restored_rows_keep_arbitrary_bytes_and_their_place(store: SagaStore) -> None:
    odd = OutboxMessage(
        saga_id="s", topic="t", key=bytes(range(256)), value=b"\x00\xff" * 100,
        headers={"ce_id": "\u00e9\u2603"}, message_id="m",
    )  # fmt: skip
    ids = await in_tx(store, lambda c: store.insert_outbox(c, [odd, message("s", 2)], NOW))
    async with store.engine.begin() as conn:
        first = await store.take_outbox(conn, limit=1)
        await store.restore_outbox(conn, first)
    again = await in_tx(store, lambda c: store.take_outbox(c, limit=10))
    assert [r.id for r in again] == ids
    assert again[0] == first[0]


async def test_rows_an_older_version_marked_sent_are_deleted_by_age_and_never_taken(
    store: SagaStore, engine: AsyncEngine
) -> None:
    ids = await queue(store, 6)
    async with engine.begin() as conn:
        await mark_sent(conn, ids[:3], NOW)
        await mark_sent(conn, ids[3:4], NOW + timedelta(hours=2))
    cutoff = NOW + timedelta(hours=1)

    assert await in_tx(store, lambda c: store.delete_sent_outbox(c, cutoff, limit=2)) == 2
    assert await in_tx(store, lambda c: store.delete_sent_outbox(c, cutoff)) == 1
    assert await in_tx(store, lambda c: store.delete_sent_outbox(c, cutoff)) == 0

    async with engine.connect() as conn:
        left: list[int] = list(
            (await conn.execute(sa.select(outbox.c.id).order_by(outbox.c.id))).scalars()
        )
    assert left == ids[3:]
    # The relay takes only the unsent rows; the one marked sent waits for its retention.
    assert [r.id for r in await in_tx(store, lambda c: store.take_outbox(c, limit=10))] == ids[4:]


async def test_taking_rows_skips_those_another_relay_holds(
    store: SagaStore,
) -> None:
    ids = await queue(store, 6)
    later = NOW + timedelta(seconds=3)

    async with store.engine.begin() as first, store.engine.begin() as second:
        a = await store.take_outbox(first, limit=4)
        b = await store.take_outbox(second, limit=100)
        await store.restore_outbox(first, a[1:2])  # not published: pending again

    assert [r.id for r in a] == ids[:4]
    assert [r.id for r in b] == ids[4:]
    assert await in_tx(store, lambda c: store.select_outbox_stats(c, later)) == (1, 3.0)
    again = await in_tx(store, lambda c: store.take_outbox(c, limit=10))
    assert [r.id for r in again] == [ids[1]]
    assert await in_tx(store, lambda c: store.take_outbox(c, limit=10)) == []


async def test_taking_rows_up_to_a_ceiling_and_those_owed_and_claiming_by_id(
    store: SagaStore,
) -> None:
    ids = await queue(store, 6)

    async with store.engine.begin() as conn:
        assert await store.highest_outbox_id(conn) == ids[-1]
        taken = await store.take_outbox(conn, limit=10, ceiling=ids[1], owed=[ids[4], 10**12])

    assert [r.id for r in taken] == [ids[0], ids[1], ids[4]]
    # A claim deletes the rows still there and says which: ids[0] was taken already.
    claimed = await in_tx(store, lambda c: store.claim_outbox(c, [ids[0], ids[2], ids[3]]))
    assert claimed == {ids[2], ids[3]}
    assert [r.id for r in await in_tx(store, lambda c: store.take_outbox(c, limit=10))] == [ids[5]]


async def test_a_transaction_hands_over_its_outbox_rows_once_it_commits(
    store: SagaStore,
) -> None:
    handed: list[list[OutboxRecord]] = []
    store.on_committed = handed.append

    async def rolled_back() -> None:
        async with store.transaction() as conn:
            await store.write_changes(conn, [], [], [message("s", 0)], NOW)
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        await rolled_back()
    async with store.transaction() as conn:
        ids = await store.write_changes(conn, [], [], [message("s", 1), message("s", 2)], NOW)
        assert handed == [], "handed over before the commit"
    async with store.transaction() as conn:
        await store.write_changes(conn, [], [], [], NOW)  # no rows: nothing handed over
    async with store.engine.begin() as conn:  # not a store transaction: nothing handed over
        await store.write_changes(conn, [], [], [message("s", 3)], NOW)

    (rows,) = handed
    assert rows == await in_tx(store, lambda c: store.take_outbox(c, limit=10, ceiling=ids[-1]))
    assert [(r.message_id, r.created_at) for r in rows] == [("m-s-1", NOW), ("m-s-2", NOW)]


async def test_concurrent_relays_drain_the_outbox_exactly_once(store: SagaStore) -> None:
    total = 300
    await queue(store, total)
    published: list[list[int]] = []

    async def relay() -> None:
        while True:
            async with store.engine.begin() as conn:
                batch = await store.take_outbox(conn, limit=7)
                if not batch:
                    return
                published.append([r.id for r in batch])
                await asyncio.sleep(0)  # let the other relays run while these rows are held

    await asyncio.gather(*(relay() for _ in range(4)))

    every = [i for batch in published for i in batch]
    assert len(every) == len(set(every)) == total
    assert all(batch == sorted(batch) for batch in published)


# -- batch size does not change the number of statements -----------------------------------


async def _statements(
    store: SagaStore, engine: AsyncEngine, size: int, prefix: str
) -> dict[str, list[str]]:
    """The SQL each store method sent for a batch of ``size`` rows."""
    sagas = [saga(f"{prefix}-{i:04}") for i in range(size)]
    counts: dict[str, list[str]] = {}
    async with engine.begin() as conn:

        async def measure(name: str, work: Awaitable[object]) -> None:
            with count_statements(engine) as statements:
                await work
            counts[name] = statements

        await measure(
            "insert_inbox", store.insert_inbox(conn, [(s.saga_id, s.saga_id) for s in sagas], NOW)
        )
        await measure("insert_sagas", store.insert_sagas(conn, sagas))
        read = await store.select_sagas_for_update(conn, [s.saga_id for s in sagas])
        await measure("select_sagas_for_update", store.select_sagas_for_update(conn, list(read)))
        updated = [
            dataclasses.replace(s, attempt=2, data={"n": i}) for i, s in enumerate(read.values())
        ]
        await measure("update_sagas", store.update_sagas(conn, updated))
        history = [(s.saga_id, HistoryEntry(HistoryKind.STARTED)) for s in sagas]
        await measure("insert_history", store.insert_history(conn, history, NOW))
        messages = [message(s.saga_id, 0) for s in sagas]
        ids: list[int] = []

        async def insert_outbox() -> None:
            ids.extend(await store.insert_outbox(conn, messages, NOW))

        await measure("insert_outbox", insert_outbox())
        taken: list[OutboxRecord] = []

        async def take_outbox() -> None:
            taken.extend(await store.take_outbox(conn, limit=size))

        await measure("take_outbox", take_outbox())
        await measure("restore_outbox", store.restore_outbox(conn, taken))
    assert len(ids) == size
    return counts


async def test_one_statement_of_the_same_text_whatever_the_batch_size(
    store: SagaStore, engine: AsyncEngine
) -> None:
    small = await _statements(store, engine, 3, "small")
    large = await _statements(store, engine, 1_000, "large")

    # The same text: asyncpg prepares each statement once per connection, and PostgreSQL
    # plans it once, instead of once per distinct batch size.
    assert large == small
    assert {len(sent) for sent in small.values()} == {1}
    async with engine.connect() as conn:
        versions = (
            await conn.execute(
                sa.select(saga_instance.c.version, sa.func.count()).group_by(
                    saga_instance.c.version
                )
            )
        ).all()
    assert [tuple(v) for v in versions] == [(2, 1_003)]
