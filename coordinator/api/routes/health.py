"""Liveness and readiness probes: ``GET /health`` and ``GET /ready`` (no token needed)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from coordinator.api.dependencies import BackendDep
from coordinator.api.models import HealthResponse, ReadyResponse

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthResponse, summary="Liveness")
async def health() -> HealthResponse:
    """The process is up and serving HTTP."""
    return HealthResponse()


@router.get(
    "/ready",
    response_model=ReadyResponse,
    responses={503: {"model": ReadyResponse, "description": "Not ready."}},
    summary="Readiness",
)
async def ready(backend: BackendDep, response: Response) -> ReadyResponse:
    """Ready when the database answers and the reply consumer runs; 503 otherwise."""
    report = await backend.readiness()
    if not report.ready:
        response.status_code = 503
    return ReadyResponse(
        ready=report.ready,
        checks=dict(report.checks),
        partitions=report.partitions,
        details=dict(report.details),
    )
