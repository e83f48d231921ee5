"""Webhooks (orchestrator/triggers/webhooks.py): signed deliveries submit jobs once, bad ones
submit none."""

from __future__ import annotations

import asyncio
import json
import logging
import pickle
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cluster import ON_EVERY_BACKEND, Cluster, notebook

from casare_nb.core.models import RunStatus, TriggerKind
from casare_nb.core.signing import sign, signed_headers
from casare_nb.core.triggers import Trigger
from casare_nb.orchestrator.triggers.webhooks import HookAccepted, HookRefused, WebhookReceiver
from casare_nb.store.interfaces import Claim

SECRET = "s3cret"
NOW = 1_800_000_000.0
PARAMS = 'region = "EU"\ncount = 1'


def body_of(values: Any) -> bytes:
    return json.dumps(values).encode()


def headers_for(
    body: bytes, *, delivery_id: str | None = None, timestamp: str | int | None = None
) -> dict[str, str]:
    return signed_headers(SECRET.encode(), body, timestamp=timestamp, delivery_id=delivery_id)


def make_receiver(
    cluster: Cluster, tmp_path: Path, *, cells: tuple[str, ...] = ("x = count",), **spec: Any
) -> WebhookReceiver:
    """A receiver on the cluster's orchestrator with webhook trigger 'hook' (and ``spec``)."""
    store = cluster.orch.stores.triggers
    workflow = notebook(tmp_path, "hooked.ipynb", list(cells), params=PARAMS)
    fields: dict[str, Any] = {
        "trigger_id": "hook",
        "workflow_path": str(workflow),
        "kind": TriggerKind.WEBHOOK,
        "secret_env": "HOOK_SECRET",
        "created_at": datetime.now(UTC),
    }
    store.add_trigger(Trigger(**(fields | spec)))
    return WebhookReceiver(
        cluster.orch.job_manager, store, environ={"HOOK_SECRET": SECRET}, now=lambda: NOW
    )


def jobs(receiver: WebhookReceiver) -> list[Any]:
    return receiver.jobs.jobs(limit=10_000)


async def refused(
    receiver: WebhookReceiver, headers: dict[str, str], body: bytes, trigger_id: str = "hook"
) -> HookRefused:
    with pytest.raises(HookRefused) as err:
        await receiver.deliver(trigger_id, headers, body)
    assert "\n" not in err.value.detail
    return err.value


async def test_a_signed_delivery_queues_a_job_with_the_body_as_its_parameters(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The job is queued with the body over the trigger's parameters, its trigger and delivery."""
    receiver = make_receiver(
        cluster,
        tmp_path,
        parameters={"count": 5},
        raw_parameters={"region": "US", "count": "7"},
        tags=["gpu"],
        max_retries=2,
    )
    body = body_of({"region": "DE"})
    accepted = await receiver.deliver("hook", headers_for(body, delivery_id="d-1"), body)
    assert accepted == HookAccepted(job_id=accepted.job_id, trigger_id="hook")
    job = cluster.job(accepted.job_id)
    assert job.status is RunStatus.QUEUED and job.source == "webhook"
    assert job.parameters == {"region": "DE", "count": 7}  # raw "7" of the trigger wins over 5
    assert job.tags == ["gpu"] and job.max_retries == 2
    assert job.trigger is not None
    assert (job.trigger.kind, job.trigger.id, job.trigger.delivery_id) == (
        TriggerKind.WEBHOOK,
        "hook",
        "d-1",
    )
    assert receiver.store.deliveries("hook") == [("d-1", accepted.job_id)]
    assert len(jobs(receiver)) == 1


@ON_EVERY_BACKEND
async def test_a_delivery_with_a_signed_timestamp_runs_on_a_robot(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A timestamped delivery within the window runs; the notebook sees the body's values."""
    receiver = make_receiver(
        cluster, tmp_path, cells=('assert (region, count) == ("DE", 3), (region, count)',)
    )
    await cluster.robot("r1")
    body = body_of({"region": "DE", "count": 3})
    sent = str(int(NOW - 120))
    accepted = await receiver.deliver("hook", headers_for(body, timestamp=sent), body)
    job = await cluster.finished(accepted.job_id)
    assert job.status is RunStatus.COMPLETED, job.error_message


async def test_headers_are_case_insensitive_and_githubs_delivery_id_is_taken(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Lower-case header names work; X-GitHub-Delivery names the delivery; an empty body is {}."""
    receiver = make_receiver(cluster, tmp_path, parameters={"count": 2})
    headers = {"x-casare-signature-256": sign(SECRET.encode(), b""), "x-github-delivery": "gh-1"}
    accepted = await receiver.deliver("hook", headers, b"")
    job = cluster.job(accepted.job_id)
    assert job.parameters == {"count": 2}  # the notebook's defaults are not stored
    assert job.trigger is not None and job.trigger.delivery_id == "gh-1"


BODY = body_of({"region": "DE"})
SIGNED_AT = str(int(NOW))


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ({}, "missing X-Casare-Signature-256"),
        ({"X-Casare-Signature-256": "deadbeef"}, "malformed"),
        ({"X-Casare-Signature-256": "sha256=" + "g" * 64}, "malformed"),
        ({"X-Casare-Signature-256": "sha1=" + "0" * 40}, "sha1 is not accepted"),
        ({"X-Casare-Signature-256": sign(b"wrong secret", BODY)}, "does not match the body"),
        ({"X-Casare-Signature-256": sign(SECRET.encode(), BODY + b" ")}, "does not match"),
        (headers_for(BODY, timestamp=str(int(NOW - 301))), "stale delivery"),
        (headers_for(BODY, timestamp=str(int(NOW + 301))), "stale delivery"),
        (headers_for(BODY, timestamp="yesterday"), "malformed X-Casare-Timestamp"),
        (
            headers_for(BODY) | {"X-Casare-Timestamp": SIGNED_AT},
            "does not match the body and X-Casare-Timestamp",
        ),
        (
            headers_for(BODY, timestamp=str(int(NOW - 400))) | {"X-Casare-Timestamp": SIGNED_AT},
            "does not match the body and X-Casare-Timestamp",
        ),
    ],
    ids=[
        "missing",
        "not-prefixed",
        "not-hex",
        "sha1",
        "wrong-secret",
        "other-body",
        "stale",
        "future",
        "bad-timestamp",
        "timestamp-not-signed",
        "timestamp-changed",
    ],
)
async def test_bad_signatures_and_timestamps_are_refused_with_401(
    cluster: Cluster, tmp_path: Path, headers: dict[str, str], why: str
) -> None:
    """Each bad signature or timestamp answers 401 with its reason; nothing is submitted."""
    receiver = make_receiver(cluster, tmp_path)
    err = await refused(receiver, headers | {"X-Casare-Delivery": "d-1"}, BODY)
    assert err.status == 401 and why in err.detail
    assert jobs(receiver) == [] and receiver.store.deliveries("hook") == []


async def test_a_replayed_signature_under_a_new_delivery_id_is_refused(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A captured delivery re-sent with another delivery id is 401 'replayed delivery'."""
    receiver = make_receiver(cluster, tmp_path)
    first = await receiver.deliver("hook", headers_for(BODY, delivery_id="d-1"), BODY)
    err = await refused(receiver, headers_for(BODY, delivery_id="d-2"), BODY)
    assert (err.status, err.detail) == (401, "replayed delivery")
    assert [job.job_id for job in jobs(receiver)] == [first.job_id]
    assert receiver.store.deliveries("hook") == [("d-1", first.job_id)]


async def test_a_repeated_delivery_id_is_a_duplicate_naming_the_first_job(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The same delivery again (even re-signed with a new timestamp) is duplicate=True, no job."""
    receiver = make_receiver(cluster, tmp_path)
    first = await receiver.deliver("hook", headers_for(BODY, delivery_id="d-1"), BODY)
    again = await receiver.deliver("hook", headers_for(BODY, delivery_id="d-1"), BODY)
    resigned = headers_for(BODY, delivery_id="d-1", timestamp=SIGNED_AT)
    later = await receiver.deliver("hook", resigned, BODY)
    assert not first.duplicate
    assert again == later == HookAccepted(job_id=first.job_id, duplicate=True, trigger_id="hook")
    assert len(jobs(receiver)) == 1


async def test_without_a_delivery_id_the_signature_names_the_delivery(
    cluster: Cluster, tmp_path: Path
) -> None:
    """No delivery header: the signature is the id, so a retry of the same bytes is a duplicate."""
    receiver = make_receiver(cluster, tmp_path)
    first = await receiver.deliver("hook", headers_for(BODY), BODY)
    again = await receiver.deliver("hook", headers_for(BODY), BODY)
    assert again.duplicate and again.job_id == first.job_id
    assert receiver.store.deliveries("hook") == [(sign(SECRET.encode(), BODY)[7:], first.job_id)]
    assert len(jobs(receiver)) == 1


@ON_EVERY_BACKEND
async def test_racing_copies_of_a_delivery_submit_once(cluster: Cluster, tmp_path: Path) -> None:
    """Identical deliveries at once: one job; copies under new delivery ids are replays."""
    receiver = make_receiver(cluster, tmp_path)
    same = await asyncio.gather(
        *(receiver.deliver("hook", headers_for(BODY, delivery_id="d-1"), BODY) for _ in range(5))
    )
    assert len({a.job_id for a in same}) == 1 and sum(not a.duplicate for a in same) == 1
    other = body_of({"region": "FR"})
    outcomes = await asyncio.gather(
        *(
            receiver.deliver("hook", headers_for(other, delivery_id=f"e-{n}"), other)
            for n in range(5)
        ),
        return_exceptions=True,
    )
    accepted = [o for o in outcomes if isinstance(o, HookAccepted)]
    assert len(accepted) == 1 and not accepted[0].duplicate
    assert all(
        isinstance(o, HookRefused) and o.status == 401 for o in outcomes if o not in accepted
    )
    assert len(jobs(receiver)) == 2 and len(receiver.store.deliveries("hook")) == 2


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"{not json", "body is not JSON: "),
        (b'{"count": NaN}', "body is not JSON: NaN is not a JSON value"),
        (b"\xff\xfe{", "body is not JSON: "),
        (b'[{"count": 2}]', "body must be a JSON object, not an array"),
        (b'"count"', "body must be a JSON object, not a string"),
        (b'{"nope": 1}', "nope"),
        (b'{"count": "many"}', "count"),
    ],
    ids=["not-json", "nan", "not-utf8", "array", "string", "unknown-parameter", "wrong-type"],
)
async def test_bodies_that_are_not_parameters_are_refused_with_422(
    cluster: Cluster, tmp_path: Path, body: bytes, why: str
) -> None:
    """422 with the reason, no job, the claim released: the fixed delivery is then accepted."""
    receiver = make_receiver(cluster, tmp_path)
    err = await refused(receiver, headers_for(body, delivery_id="d-1"), body)
    assert err.status == 422 and why in err.detail, err.detail
    assert jobs(receiver) == [] and receiver.store.deliveries("hook") == []
    fixed = body_of({"count": 2})
    accepted = await receiver.deliver("hook", headers_for(fixed, delivery_id="d-1"), fixed)
    assert not accepted.duplicate and cluster.job(accepted.job_id).parameters["count"] == 2


async def test_unknown_disabled_and_other_triggers_answer_as_a_bad_signature(
    cluster: Cluster, tmp_path: Path
) -> None:
    """No trigger, a disabled one or one that is not a webhook answer exactly what a live
    webhook answers a sender without its secret (401, same detail), so ids cannot be
    probed; a missing signature is named the same way for both."""
    receiver = make_receiver(cluster, tmp_path)
    receiver.store.add_trigger(
        Trigger(
            trigger_id="files",
            workflow_path=str(tmp_path / "hooked.ipynb"),
            kind=TriggerKind.FILE_WATCH,
            watch_path=str(tmp_path),
            secret_env="HOOK_SECRET",
            created_at=datetime.now(UTC),
        )
    )
    forged = signed_headers(b"not-the-secret", BODY, delivery_id="d-x")
    live = await refused(receiver, forged, BODY)
    assert (live.status, live.detail) == (401, "signature does not match the body")
    receiver.store.set_enabled("hook", False)
    for trigger_id in ("nope", "files", "hook"):
        err = await refused(receiver, forged, BODY, trigger_id)
        assert (err.status, err.detail) == (live.status, live.detail), trigger_id
        bare = await refused(receiver, {}, BODY, trigger_id)
        assert (bare.status, bare.detail) == (401, "missing X-Casare-Signature-256 header")
    assert jobs(receiver) == []


async def test_a_webhook_without_its_secret_refuses_everything(
    cluster: Cluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Secret variable unset or empty: 401 for every delivery (as a wrong signature: the
    sender learns nothing), and one warning logged for the operator."""
    receiver = make_receiver(cluster, tmp_path)
    for environ in ({}, {"HOOK_SECRET": ""}):
        receiver = WebhookReceiver(
            cluster.orch.job_manager, receiver.store, environ=environ, now=lambda: NOW
        )
        with caplog.at_level(logging.WARNING, logger="casare_nb.orchestrator.triggers.webhooks"):
            caplog.clear()
            for _ in range(3):
                err = await refused(receiver, headers_for(BODY), BODY)
                assert (err.status, err.detail) == (401, "signature does not match the body")
        assert [r.message for r in caplog.records] == [
            "webhook hook refuses every delivery: its secret variable HOOK_SECRET is not set"
        ]
    assert jobs(receiver) == []


async def test_a_draining_orchestrator_answers_503_and_keeps_no_claim(
    cluster: Cluster, tmp_path: Path
) -> None:
    """While draining a delivery is 503 and not recorded, so the sender can retry it later."""
    receiver = make_receiver(cluster, tmp_path)
    await cluster.orch.drain(timeout_s=0)
    err = await refused(receiver, headers_for(BODY, delivery_id="d-1"), BODY)
    assert err.status == 503
    assert jobs(receiver) == [] and receiver.store.deliveries("hook") == []


@pytest.mark.slow
async def test_a_flood_of_deliveries_is_all_accounted_for(cluster: Cluster, tmp_path: Path) -> None:
    """1,000 deliveries at once: 1,000 jobs, one per delivery; 100 re-sent are duplicates."""
    receiver = make_receiver(cluster, tmp_path)
    sends = []
    for n in range(1000):
        body = body_of({"count": n})
        sends.append((headers_for(body, delivery_id=f"flood-{n}", timestamp=SIGNED_AT), body))
    started = time.perf_counter()
    accepted = await asyncio.gather(*(receiver.deliver("hook", h, b) for h, b in sends))
    took = time.perf_counter() - started
    print(f"\nflood: 1,000 webhook deliveries accepted in {took:.2f} s")
    assert not any(a.duplicate for a in accepted)
    queued = jobs(receiver)
    assert len(queued) == 1000 and {j.job_id for j in queued} == {a.job_id for a in accepted}
    by_delivery = {j.trigger.delivery_id: j for j in queued if j.trigger is not None}
    assert len(by_delivery) == 1000
    assert all(by_delivery[f"flood-{n}"].parameters["count"] == n for n in range(1000))
    assert len(receiver.store.deliveries("hook")) == 1000
    again = await asyncio.gather(*(receiver.deliver("hook", h, b) for h, b in sends[:100]))
    assert all(a.duplicate for a in again)
    assert [a.job_id for a in again] == [a.job_id for a in accepted[:100]]
    assert len(jobs(receiver)) == 1000


async def test_the_url_and_refusals_are_as_senders_see_them(
    cluster: Cluster, tmp_path: Path
) -> None:
    """url() names /hooks/<id> under the base; HookRefused pickles with its status and detail."""
    receiver = make_receiver(cluster, tmp_path)
    assert (
        receiver.url("http://127.0.0.1:8000/", "nightly") == "http://127.0.0.1:8000/hooks/nightly"
    )
    assert receiver.url("http://h", "a b/c") == "http://h/hooks/a%20b%2Fc"
    err = pickle.loads(pickle.dumps(HookRefused(422, "body must be a JSON object")))
    assert (err.status, err.detail, str(err)) == (422, "body must be a JSON object", err.detail)


async def test_a_run_id_taken_by_another_submitter_is_replaced(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new run id already taken (same second) is swapped for another, in the claim too."""
    receiver = make_receiver(cluster, tmp_path)
    taken = await cluster.orch.submit(tmp_path / "hooked.ipynb", job_id="20300101-000000-aaaaaa")
    ids = iter([taken.job_id, "20300101-000000-bbbbbb"])
    monkeypatch.setattr("casare_nb.orchestrator.triggers.webhooks.new_run_id", lambda: next(ids))
    accepted = await receiver.deliver("hook", headers_for(BODY, delivery_id="d-1"), BODY)
    assert accepted.job_id == "20300101-000000-bbbbbb"
    assert receiver.store.deliveries("hook") == [("d-1", accepted.job_id)]
    job = cluster.job(accepted.job_id)
    assert job.trigger is not None and job.trigger.delivery_id == "d-1"
    assert cluster.job(taken.job_id).trigger is None and len(jobs(receiver)) == 2


@ON_EVERY_BACKEND
async def test_claims_made_together_decide_duplicates_and_replays_in_order(
    cluster: Cluster,
) -> None:
    """TriggerStore.claim_deliveries: first of an id wins, a known signature under a new id is
    a replay (None, not recorded), in one batch as across batches."""
    store = cluster.orch.stores.triggers
    assert store.claim_deliveries("t", []) == []
    first = store.claim_deliveries("t", [("a", "sa", "j1"), ("a", "sx", "j2"), ("b", "sa", "j3")])
    assert first == [Claim(True, "j1"), Claim(False, "j1"), None]
    later = store.claim_deliveries("t", [("a", "sa", "j4"), ("c", "sa", "j5"), ("d", "sd", "j6")])
    assert later == [Claim(False, "j1"), None, Claim(True, "j6")]
    assert store.claim_deliveries("other", [("a", "sa", "j7")]) == [Claim(True, "j7")]
    assert store.deliveries("t") == [("a", "j1"), ("d", "j6")]
    assert store.signature_seen("t", "sd") and not store.signature_seen("t", "sx")
