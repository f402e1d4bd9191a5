"""Participant heartbeats: "this service instance is alive, and working on these commands".

A participant publishes one to ``saga.heartbeats`` (key: the service name) every few seconds.
The coordinator uses them for two facts a deadline needs: a command nobody has picked up yet
while its service is alive is waiting in a queue (a capacity matter, not a failure), and a
command listed under ``in_progress`` was picked up, so its step's timeout runs from then.
Services that send no heartbeats get deadlines counted from the send, as before.
"""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

__all__ = ["Heartbeat", "PickedUpCommand"]


class PickedUpCommand(BaseModel):
    """A command whose handler started and that has not been answered yet."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    saga_id: str = Field(min_length=1, max_length=200)
    saga_type: str = Field(min_length=1, max_length=200)
    step: str = Field(min_length=1, max_length=200)
    command_id: str = Field(min_length=1, max_length=200)
    attempt: int = Field(default=1, ge=1)


class Heartbeat(BaseModel):
    """One participant instance's report.

    Attributes:
        service: The service name (its commands topic is ``<service>.commands``).
        instance: Unique per running process.
        sent_at: The participant's clock; informative only (the coordinator stamps receipt).
        in_progress: Commands picked up since the last heartbeat and not answered yet.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    service: str = Field(min_length=1, max_length=200)
    instance: str = Field(min_length=1, max_length=200)
    sent_at: AwareDatetime = Field(default_factory=lambda: datetime.now(UTC))
    in_progress: tuple[PickedUpCommand, ...] = Field(default=(), max_length=10_000)

    def to_bytes(self) -> bytes:
        """The record body."""
        return self.model_dump_json().encode()
