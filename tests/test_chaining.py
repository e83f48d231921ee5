"""Chaining: a workflow submitted when a job of another finishes, with its outputs passed on."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cluster import ON_EVERY_BACKEND, Cluster, notebook

from casare_nb.core.models import Job, RunStatus, TriggerKind, TriggerRef
from casare_nb.core.triggers import Trigger
from casare_nb.orchestrator.triggers.chaining import Chainer

# a workflow failing when given fail=True, recording rows = 42 otherwise
FIRST_CELLS = ["import casare_nb\nassert not fail, 'asked to fail'\ncasare_nb.output('rows', 42)"]


def chain(
    trigger_id: str, kind: TriggerKind, after: Path, run: Path, *, enabled: bool = True
) -> Trigger:
    return Trigger(
        trigger_id=trigger_id,
        kind=kind,
        workflow_path=str(run),
        after_workflow=str(after),
        enabled=enabled,
        created_at=datetime.now(UTC),
    )


@pytest.fixture
def chainer(cluster: Cluster) -> Chainer:
    """The orchestrator's own chainer (started with it)."""
    return cluster.orch.triggers.chainer


async def settle(chainer: Chainer) -> None:
    """Let every job finished so far chain what it chains (stop waits for it), then go on."""
    await chainer.stop()
    chainer.start()


def chained_after(cluster: Cluster, job_id: str) -> list[Job]:
    return [
        j
        for j in cluster.orch.jobs(limit=1000)
        if j.trigger is not None and j.trigger.previous_job_id == job_id
    ]


@ON_EVERY_BACKEND
async def test_on_success_passes_previous_run_id_and_outputs(
    cluster: Cluster, chainer: Chainer, tmp_path: Path
) -> None:
    """a -> b on success: b gets a's job id and a's output `rows`; a's outputs are stored."""
    a = notebook(tmp_path, "a.ipynb", FIRST_CELLS, params="fail = False")
    b = notebook(
        tmp_path,
        "b.ipynb",
        ["assert rows == 42 and previous_run_id, (rows, previous_run_id)"],
        params='previous_run_id = ""\nrows = 0\nlabel = "x"',
    )
    trigger = chain("a-then-b", TriggerKind.ON_SUCCESS, a, b)
    trigger.parameters = {"label": "nightly"}
    chainer.store.add_trigger(trigger)
    await cluster.robot("r1")
    first = await cluster.orch.submit(a)
    assert (await cluster.finished(first.job_id)).status is RunStatus.COMPLETED
    await cluster.until(lambda: len(chained_after(cluster, first.job_id)) == 1)
    (second,) = chained_after(cluster, first.job_id)
    assert second.trigger == TriggerRef(
        kind=TriggerKind.ON_SUCCESS, id="a-then-b", previous_job_id=first.job_id
    )
    assert second.source == "chain" and second.workflow_path == str(b)
    assert second.parameters == {"previous_run_id": first.job_id, "rows": 42, "label": "nightly"}
    assert (await cluster.finished(second.job_id)).status is RunStatus.COMPLETED
    assert chainer.outputs.outputs(first.job_id) == {"rows": 42}
    assert chainer.outputs.outputs(second.job_id) == {}
    assert chainer.store.deliveries("a-then-b") == [(first.job_id, second.job_id)]


async def test_on_failure_and_on_success_fire_for_their_outcome_only(
    cluster: Cluster, chainer: Chainer, tmp_path: Path
) -> None:
    """A failing job fires on_failure only, a succeeding one on_success only; disabled: none."""
    a = notebook(tmp_path, "a.ipynb", FIRST_CELLS, params="fail = False")
    ok = notebook(tmp_path, "ok.ipynb", ["x = 1"], params='previous_run_id = ""')
    bad = notebook(tmp_path, "bad.ipynb", ["x = 1"], params='previous_run_id = ""')
    store = chainer.store
    store.add_trigger(chain("on-ok", TriggerKind.ON_SUCCESS, a, ok))
    store.add_trigger(chain("on-bad", TriggerKind.ON_FAILURE, a, bad))
    store.add_trigger(chain("off", TriggerKind.ON_SUCCESS, a, ok, enabled=False))
    await cluster.robot("r1")

    failing = await cluster.orch.submit(a, {"fail": True})
    assert (await cluster.finished(failing.job_id)).status is RunStatus.FAILED
    await settle(chainer)
    (after_fail,) = chained_after(cluster, failing.job_id)
    assert after_fail.workflow_path == str(bad)
    assert after_fail.trigger is not None and after_fail.trigger.kind is TriggerKind.ON_FAILURE
    assert after_fail.parameters == {"previous_run_id": failing.job_id}

    passing = await cluster.orch.submit(a, {"fail": False})
    assert (await cluster.finished(passing.job_id)).status is RunStatus.COMPLETED
    await settle(chainer)
    (after_pass,) = chained_after(cluster, passing.job_id)
    assert after_pass.workflow_path == str(ok)
    assert after_pass.trigger is not None and after_pass.trigger.id == "on-ok"
    assert store.deliveries("off") == []
    assert store.deliveries("on-bad") == [(failing.job_id, after_fail.job_id)]


async def test_chain_of_chains_and_a_cycle_stops_at_the_depth_limit(
    cluster: Cluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """a -> a chains a job after each job until max_depth links, then logs an error."""
    chainer = cluster.orch.triggers.chainer
    chainer.max_depth = 2
    a = notebook(tmp_path, "loop.ipynb", ["x = 1"], params='previous_run_id = ""')
    chainer.store.add_trigger(chain("loop", TriggerKind.ON_SUCCESS, a, a))
    try:
        await cluster.robot("r1")
        first = await cluster.orch.submit(a)
        await cluster.until(lambda: len(chained_after(cluster, first.job_id)) == 1)
        (second,) = chained_after(cluster, first.job_id)
        await cluster.until(lambda: len(chained_after(cluster, second.job_id)) == 1)
        (third,) = chained_after(cluster, second.job_id)
        assert third.parameters == {"previous_run_id": second.job_id}
        await cluster.finished(third.job_id)
    finally:
        with caplog.at_level(logging.ERROR, "casare_nb.orchestrator.triggers.chaining"):
            await chainer.stop()
    assert chained_after(cluster, third.job_id) == []
    assert len(cluster.orch.jobs(limit=1000)) == 3
    assert f"job {third.job_id} ends a chain of 3 jobs" in caplog.text


@ON_EVERY_BACKEND
async def test_two_chainers_submit_once_and_a_failed_submit_is_released(
    cluster: Cluster, chainer: Chainer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two chainers seeing one finished job submit one job; a submit error is logged and
    its claim released."""
    a = notebook(tmp_path, "a.ipynb", FIRST_CELLS, params="fail = False")
    b = notebook(tmp_path, "b.ipynb", ["x = 1"], params="rows = 0")
    store = chainer.store
    store.add_trigger(chain("once", TriggerKind.ON_SUCCESS, a, b))
    broken = chain("broken", TriggerKind.ON_SUCCESS, a, b)
    broken.parameters = {"nope": 1}  # b declares no such parameter
    store.add_trigger(broken)
    other = Chainer(
        cluster.orch.job_manager, cluster.orch.stores.triggers, cluster.orch.stores.outputs
    )
    other.start()
    try:
        await cluster.robot("r1")
        first = await cluster.orch.submit(a)
        await cluster.finished(first.job_id)
    finally:
        with caplog.at_level(logging.ERROR, "casare_nb.orchestrator.triggers.chaining"):
            await other.stop()
            await settle(chainer)
    (second,) = chained_after(cluster, first.job_id)
    assert second.trigger is not None and second.trigger.id == "once"
    assert second.parameters == {"rows": 42}
    assert store.deliveries("once") == [(first.job_id, second.job_id)]
    assert store.deliveries("broken") == []
    assert "trigger broken: cannot submit" in caplog.text
