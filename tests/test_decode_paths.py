"""decode parses a valid frame in one pass (pydantic's JSON parser) and takes the long way
(json, then validation) for anything that pass refuses: both answer the same message, and the
refusals keep their words."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from casare_nb.core.models import CellStatus
from casare_nb.protocol import (
    ErrorCode,
    JobAssign,
    JobProgress,
    ProtocolError,
    Register,
    Role,
    decode,
    encode,
)
from casare_nb.protocol.codec import MESSAGE_ADAPTER, _decode_fast

CELL = {
    "id": "c0",
    "cell_type": "code",
    "source": "print('é ✓')",
    "metadata": {"tags": ["x"]},
    "execution_count": 1,
    "outputs": [{"output_type": "stream", "name": "stdout", "text": "é ✓\n"}],
}


def progress(**fields: object) -> JobProgress:
    values: dict[str, object] = {
        "job_id": "j1",
        "attempt": 1,
        "cell_index": 0,
        "cell_id": "c0",
        "status": CellStatus.OK,
        "duration_s": 0.5,
        "cells_done": 1,
        "cells_total": 2,
        "started_at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        "cell": CELL,
    }
    values.update(fields)
    return JobProgress.model_validate(values)


def test_one_pass_and_long_way_answer_the_same_message() -> None:
    """A valid frame decodes in one pass to the message the long way (json.loads, then
    validation) gives, field for field."""
    frame = encode(progress())
    fast = _decode_fast(frame, Role.ROBOT)
    assert fast is not None
    slow = MESSAGE_ADAPTER.validate_python(json.loads(frame))
    assert fast == slow == decode(frame, sender=Role.ROBOT)
    assert isinstance(fast, JobProgress) and fast.cell == CELL


@pytest.mark.parametrize(
    ("frame", "words"),
    [
        (
            encode(progress()).replace("print(", "\\ud800print("),
            r"not valid Unicode \(a lone surrogate\)",
        ),
        (encode(progress()).replace('"duration_s":0.5', '"duration_s":NaN'), "NaN is not valid"),
        ('{"type": "job_progress", "id": "m1"', "not JSON"),
        (encode(progress()).replace('"attempt":1', '"attempt":0'), "attempt"),
    ],
)
def test_what_one_pass_refuses_is_refused_in_the_long_ways_words(frame: str, words: str) -> None:
    """A lone surrogate's escape, NaN, bad JSON or an invalid field: the one pass answers
    nothing and decode refuses with the long way's invalid_message."""
    assert _decode_fast(frame, Role.ROBOT) is None
    with pytest.raises(ProtocolError, match=words) as refused:
        decode(frame, sender=Role.ROBOT)
    assert refused.value.code is ErrorCode.INVALID_MESSAGE


def test_a_role_that_may_not_send_it_and_an_unknown_version_take_the_long_way() -> None:
    """A robot sending job_assign is refused as before; a register of a version this side does
    not speak is refused as unsupported_version."""
    assign = encode(JobAssign(job_id="j1", attempt=1, workflow_path="w.ipynb", notebook=_nb()))
    assert _decode_fast(assign, Role.ROBOT) is None
    with pytest.raises(ProtocolError, match="a robot may not send job_assign"):
        decode(assign, sender=Role.ROBOT)
    register = encode(Register(robot_id="r", name="r")).replace(
        '"protocol_version":2', '"protocol_version":99'
    )
    with pytest.raises(ProtocolError) as refused:
        decode(register, sender=Role.ROBOT)
    assert refused.value.code is ErrorCode.UNSUPPORTED_VERSION


def _nb() -> dict[str, object]:
    return {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
