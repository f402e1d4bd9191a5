"""The schedule endpoints of the HTTP API, over an in-memory schedule backend."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest
from pydantic import SecretStr

from coordinator.api.app import create_api
from coordinator.config import HttpSettings
from coordinator.core.schedule import ScheduleNotFoundError
from coordinator.ops.schedules import ScheduleView
from coordinator.store.schedules import FiredTick

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
T0 = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)

NIGHTLY = ScheduleView(
    name="nightly",
    saga_type="order",
    cron="0 2 * * *",
    description="At 02:00 every day",
    catch_up="latest",
    source="definition",
    paused=False,
    next_tick_at=T0,
    last_tick_at=None,
    last_saga_id=None,
    last_fired_at=None,
    paused_at=None,
    paused_by=None,
    pause_reason=None,
    declared_at=T0,
)


class FakeSchedules:
    """One schedule in memory."""

    def __init__(self) -> None:
        self.views = {"nightly": NIGHTLY}

    async def list_schedules(self) -> list[ScheduleView]:
        return list(self.views.values())

    def _get(self, name: str) -> ScheduleView:
        if name not in self.views:
            raise ScheduleNotFoundError(f"no schedule named {name!r}")
        return self.views[name]

    async def show(self, name: str) -> tuple[ScheduleView, list[FiredTick]]:
        return self._get(name), [FiredTick(name, T0, f"{name}@20261201T020000Z", "started")]

    async def pause(self, name: str, *, actor: str, reason: str) -> ScheduleView:
        view = dataclasses.replace(
            self._get(name), paused=True, paused_by=actor, pause_reason=reason, next_tick_at=None
        )
        self.views[name] = view
        return view

    async def resume(self, name: str, *, actor: str, reason: str | None = None) -> ScheduleView:
        view = dataclasses.replace(self._get(name), paused=False, paused_by=actor)
        self.views[name] = view
        return view


@pytest.fixture
async def api() -> AsyncIterator[httpx.AsyncClient]:
    app = create_api(
        object(),  # type: ignore[arg-type]  # the saga backend is not used here
        HttpSettings(token=SecretStr(TOKEN)),
        schedules=FakeSchedules(),
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://api"
    ) as client:
        yield client


async def test_schedules_are_listed_with_their_next_tick(api: httpx.AsyncClient) -> None:
    listed = await api.get("/schedules", headers=AUTH)
    assert listed.status_code == 200, listed.text
    (item,) = listed.json()["items"]
    assert (item["name"], item["next_tick_at"]) == ("nightly", "2026-12-01T02:00:00Z")
    one = await api.get("/schedules/nightly", headers=AUTH)
    assert one.json()["ticks"][0]["saga_id"] == "nightly@20261201T020000Z"


async def test_pause_and_resume_need_the_token_and_a_pause_needs_a_reason(
    api: httpx.AsyncClient,
) -> None:
    assert (await api.post("/schedules/nightly/pause", json={"reason": "x"})).status_code == 401
    no_reason = await api.post("/schedules/nightly/pause", json={}, headers=AUTH)
    assert no_reason.status_code == 422
    paused = await api.post(
        "/schedules/nightly/pause", json={"reason": "audit", "actor": "ann"}, headers=AUTH
    )
    assert paused.status_code == 200, paused.text
    assert (paused.json()["paused"], paused.json()["paused_by"]) == (True, "ann")
    assert paused.json()["next_tick_at"] is None
    resumed = await api.post("/schedules/nightly/resume", json={}, headers=AUTH)
    assert (resumed.json()["paused"], resumed.json()["paused_by"]) == (False, "http-api")


async def test_an_unknown_schedule_answers_404(api: httpx.AsyncClient) -> None:
    for response in (
        await api.get("/schedules/nope", headers=AUTH),
        await api.post("/schedules/nope/pause", json={"reason": "x"}, headers=AUTH),
        await api.post("/schedules/nope/resume", json={}, headers=AUTH),
    ):
        assert response.status_code == 404
        assert response.json()["error"] == "schedule_not_found"


async def test_without_a_schedule_backend_the_endpoints_answer_503() -> None:
    app = create_api(object(), HttpSettings(token=SecretStr(TOKEN)))  # type: ignore[arg-type]
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://api"
    ) as client:
        assert (await client.get("/schedules", headers=AUTH)).status_code == 503
