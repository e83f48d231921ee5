"""The runbook's thresholds: defaults as in its table, levels at the right side of each
limit, and limits that are refused when they make no sense."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from casare_nb.core.thresholds import Level, Limit, Thresholds, worst


def test_the_default_thresholds_are_the_runbooks_table() -> None:
    """Queue depth warns above 50 and is critical above 100; CPU at 80/95 % inclusive."""
    t = Thresholds()
    assert [t.queue_depth.level(v) for v in (50, 51, 100, 101)] == [
        Level.OK,
        Level.WARN,
        Level.WARN,
        Level.CRITICAL,
    ]
    assert [t.robot_cpu_percent.level(v) for v in (79.9, 80, 94.9, 95)] == [
        Level.OK,
        Level.WARN,
        Level.WARN,
        Level.CRITICAL,
    ]
    assert t.heartbeats_missed.level(None) is Level.OK
    assert (t.failure_rate_percent.warn, t.connection_failures_per_hour.critical) == (10, 20)


def test_a_limit_below_its_warning_or_an_unknown_key_is_refused() -> None:
    """critical < warn, a negative limit or a misspelt figure is a validation error."""
    with pytest.raises(ValidationError, match="below warn"):
        Limit(warn=10, critical=5)
    with pytest.raises(ValidationError):
        Limit(warn=-1, critical=5)
    with pytest.raises(ValidationError, match="queue_dept"):
        Thresholds.model_validate({"queue_dept": {"warn": 1, "critical": 2}})


def test_worst_is_the_most_worrying_level() -> None:
    """worst picks critical over warn over ok, and ok of nothing."""
    assert worst([Level.WARN, Level.CRITICAL, Level.OK]) is Level.CRITICAL
    assert worst([Level.OK, Level.WARN]) is Level.WARN and worst([]) is Level.OK
