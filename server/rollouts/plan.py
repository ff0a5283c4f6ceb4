"""A request to start a rollout, validated the same way for HTTP and gRPC."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from adapters.manifest import MAX_VERSION
from adapters.rollouts import RolloutMode
from server.errors import InvalidRequest
from server.requests import validation_message
from server.rollouts.gates import Gates


class RolloutPlan(BaseModel):
    """`version` on trial: a canary of `percent` % of the name's requests (0 < percent <
    100), or a shadow of all of them (no `percent`). Gates left out take their defaults."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    version: int = Field(ge=1, le=MAX_VERSION)
    mode: RolloutMode = RolloutMode.CANARY
    percent: float | None = Field(default=None, gt=0, lt=100)
    gates: Gates = Field(default_factory=Gates)

    @model_validator(mode="after")
    def _percent_fits_mode(self) -> Self:
        if self.mode is RolloutMode.CANARY and self.percent is None:
            raise ValueError("percent: a canary needs the share of requests, above 0, below 100")
        if self.mode is RolloutMode.SHADOW and self.percent is not None:
            raise ValueError("percent: a shadow rollout copies every request; leave it out")
        return self

    @property
    def share(self) -> float:
        """The canary's percent; 0 for a shadow."""
        return self.percent or 0.0


def parse_plan(fields: Mapping[str, Any]) -> RolloutPlan:
    """Validate a rollout request from outside HTTP's body parsing (gRPC)."""
    try:
        return RolloutPlan.model_validate(fields)
    except ValidationError as exc:
        raise InvalidRequest(validation_message(exc.errors())) from exc
