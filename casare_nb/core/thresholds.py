"""The runbook's health thresholds: a warning and a critical level per figure.

One model for every reader: ``casare-nb status``, the dashboard's colours, the Prometheus
alert rules in docs/ and the orchestrator's settings (``thresholds:``). Pure: no I/O.

=========================  =======  ========  =================================
figure                     warn     critical  unit
=========================  =======  ========  =================================
queue depth                > 50     > 100     queued jobs
robot CPU, robot memory    >= 80    >= 95     percent
job failure rate           >= 10    >= 25     percent of the last hour's jobs
heartbeats missed          >= 1     >= 3      heartbeat intervals without one
connection failures        >= 5     >= 20     per hour (refused tokens, drops)
=========================  =======  ========  =================================
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["Level", "Limit", "Thresholds", "worst"]


class Level(StrEnum):
    """How worrying a figure is."""

    OK = "ok"
    WARN = "warn"
    CRITICAL = "critical"


_RANK = {Level.OK: 0, Level.WARN: 1, Level.CRITICAL: 2}


def worst(levels: list[Level] | tuple[Level, ...]) -> Level:
    """The most worrying of ``levels`` (OK for none)."""
    return max(levels, key=_RANK.__getitem__, default=Level.OK)


class Limit(BaseModel):
    """A warning and a critical level; ``strict`` compares with ``>``, else ``>=``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    warn: float = Field(ge=0)
    critical: float = Field(ge=0)
    strict: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> Limit:
        if self.critical < self.warn:
            raise ValueError(f"critical ({self.critical:g}) is below warn ({self.warn:g})")
        return self

    def level(self, value: float | None) -> Level:
        """The level of ``value``; an unknown value (None) is OK."""
        if value is None:
            return Level.OK
        if value > self.critical if self.strict else value >= self.critical:
            return Level.CRITICAL
        if value > self.warn if self.strict else value >= self.warn:
            return Level.WARN
        return Level.OK


class Thresholds(BaseModel):
    """The runbook's table; every limit can be changed in the orchestrator's settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    queue_depth: Limit = Limit(warn=50, critical=100, strict=True)
    robot_cpu_percent: Limit = Limit(warn=80, critical=95)
    robot_memory_percent: Limit = Limit(warn=80, critical=95)
    failure_rate_percent: Limit = Limit(warn=10, critical=25)
    heartbeats_missed: Limit = Limit(warn=1, critical=3)
    connection_failures_per_hour: Limit = Limit(warn=5, critical=20)
