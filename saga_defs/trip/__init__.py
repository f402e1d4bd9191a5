"""The trip saga (every saga shape) and its loyalty sagas, with the nightly statement."""

from saga_defs.trip.loyalty import (
    LoyaltyAwardSaga,
    LoyaltyRevokeSaga,
    LoyaltyStatementSaga,
    PointsData,
    StatementData,
)
from saga_defs.trip.saga import (
    APPROVAL_ABOVE_CENTS,
    FRAUD_CHECK_ABOVE_CENTS,
    Approval,
    TripData,
    TripSaga,
    points_for,
)

__all__ = [
    "APPROVAL_ABOVE_CENTS",
    "FRAUD_CHECK_ABOVE_CENTS",
    "TRIP_SAGAS",
    "Approval",
    "LoyaltyAwardSaga",
    "LoyaltyRevokeSaga",
    "LoyaltyStatementSaga",
    "PointsData",
    "StatementData",
    "TripData",
    "TripSaga",
    "points_for",
]

TRIP_SAGAS = (TripSaga, LoyaltyAwardSaga, LoyaltyRevokeSaga, LoyaltyStatementSaga)
"""The trip saga with the sagas it starts, and the nightly statement."""
