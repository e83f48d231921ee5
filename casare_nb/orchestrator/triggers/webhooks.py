"""Webhooks: a signed HTTP delivery submits a run of the trigger's workflow.

``POST /hooks/{trigger_id}`` (the route is in ``http.py``) hands the headers and the raw body
to :meth:`WebhookReceiver.deliver`, which checks, in this order, refusing with
:class:`HookRefused`:

- 404: no enabled webhook trigger with that id;
- 401: the secret (the orchestrator's environment variable named by ``secret_env``) is unset,
  or the signature is missing, malformed, sha1, wrong, or the timestamp is stale or not
  signed (see :mod:`casare_nb.core.signing`);
- 422: the body is not a JSON object (an empty body is ``{}``);
- the delivery id (``X-Casare-Delivery``, ``X-GitHub-Delivery``, else the signature) already
  recorded for the trigger: accepted again as a duplicate, naming the first delivery's job,
  nothing submitted; a signature recorded under another delivery id: 401 replayed delivery;
- the delivery is claimed under a new job id, then the job is submitted with the body's
  values over the trigger's parameters; 422 if they do not fit the workflow's parameters
  (and 503 while draining), and then the claim is released so the delivery may come again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, NoReturn
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict

from casare_nb.core.errors import CasareError, JobExists, SubmissionsClosed, WorkflowError
from casare_nb.core.ids import new_run_id
from casare_nb.core.params import ParameterError
from casare_nb.core.signing import (
    DELIVERY_HEADER,
    GITHUB_DELIVERY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SignatureError,
    check_timestamp,
    verify_signature,
)
from casare_nb.core.text import unicode_problem
from casare_nb.core.triggers import Trigger, TriggerKind, TriggerRef
from casare_nb.orchestrator.triggers.desk import JobDesk
from casare_nb.store.interfaces import Claim, TriggerStore

__all__ = ["HookAccepted", "HookRefused", "WebhookReceiver"]

logger = logging.getLogger("casare_nb.orchestrator.triggers.webhooks")

_ID_ATTEMPTS: Final = 3  # job ids tried when a new run id is taken already (same second)

_Waiter = tuple[tuple[str, str, str], "asyncio.Future[Claim | None]"]
"""A claim to make, (delivery id, signature, job id), and the future its answer goes to."""


class HookRefused(CasareError):
    """A webhook delivery refused: the HTTP ``status`` to answer and a one-line ``detail``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail

    def __reduce__(self) -> tuple[type[HookRefused], tuple[int, str]]:
        return type(self), (self.status, self.detail)


class HookAccepted(BaseModel):
    """A delivery taken: the job it submitted, or (``duplicate``) the one its first copy did."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    duplicate: bool = False
    trigger_id: str


class WebhookReceiver:
    """Checks webhook deliveries and submits their jobs on an orchestrator (see the module).

    One per orchestrator: it decides which of two racing deliveries of a trigger comes
    first. ``environ`` holds the secrets (the orchestrator's environment), ``now`` is the
    clock the timestamp window is measured with."""

    def __init__(
        self,
        jobs: JobDesk,
        store: TriggerStore,
        *,
        environ: Mapping[str, str] = os.environ,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.jobs = jobs
        self.store = store
        self._environ = environ
        self._now = now
        self._locks: dict[str, asyncio.Lock] = {}  # trigger id -> its claims, one at a time
        self._waiting: dict[str, list[_Waiter]] = {}  # trigger id -> claims not made yet
        self._pending: set[str] = set()  # job ids claimed, not submitted yet
        self._tasks: set[asyncio.Task[HookAccepted]] = set()
        self._warned: set[str] = set()  # triggers whose missing secret was logged
        self._decoy = secrets.token_bytes(32)  # verifies what no live webhook would take

    def url(self, base: str, trigger_id: str) -> str:
        """The address a sender posts deliveries of ``trigger_id`` to, under ``base``."""
        return f"{base.rstrip('/')}/hooks/{quote(trigger_id, safe='')}"

    async def deliver(
        self, trigger_id: str, headers: Mapping[str, str], body: bytes
    ) -> HookAccepted:
        """Check a delivery and submit its job (or name the job its first copy submitted).

        ``headers`` are looked up case-insensitively; ``body`` is the raw request body.
        Raises :class:`HookRefused` (404, 401, 422, 503) with nothing submitted. Once the
        delivery is claimed, it is seen through even if the caller stops waiting."""
        trigger = await asyncio.to_thread(self.store.trigger, trigger_id)
        given = {name.lower(): value for name, value in headers.items()}
        if trigger is None or not trigger.enabled or trigger.kind is not TriggerKind.WEBHOOK:
            # answered exactly as a live webhook whose secret the sender lacks would be:
            # an id cannot be probed
            self._check(self._decoy, given, body, None)
            _refuse(401, _NO_MATCH)
        signature = self._verify(trigger, given, body)
        values = _body_values(body)
        delivery_id = (
            given.get(DELIVERY_HEADER.lower(), "").strip()
            or given.get(GITHUB_DELIVERY_HEADER.lower(), "").strip()
            or signature
        )
        task = asyncio.ensure_future(self._accept(trigger, delivery_id, signature, values))
        self._tasks.add(task)
        task.add_done_callback(self._settled)
        return await asyncio.shield(task)

    def _verify(self, trigger: Trigger, headers: Mapping[str, str], body: bytes) -> str:
        """The signature's hex digest, once it and the timestamp check out (else 401)."""
        name = trigger.secret_env
        secret = self._environ.get(name, "") if name else ""
        if not secret:
            if trigger.trigger_id not in self._warned:
                self._warned.add(trigger.trigger_id)
                logger.warning(
                    "webhook %s refuses every delivery: its secret variable %s is not set",
                    trigger.trigger_id,
                    name or "(none given)",
                )
            self._check(self._decoy, headers, body, trigger.trigger_id)  # no hint to a prober
            _refuse(401, _NO_MATCH, trigger.trigger_id)
        return self._check(secret.encode(), headers, body, trigger.trigger_id)

    def _check(
        self, secret: bytes, headers: Mapping[str, str], body: bytes, trigger_id: str | None
    ) -> str:
        timestamp = headers.get(TIMESTAMP_HEADER.lower())
        try:
            signature = verify_signature(
                secret, body, headers.get(SIGNATURE_HEADER.lower()), timestamp
            )
            check_timestamp(timestamp, now=self._now())
        except SignatureError as exc:
            _refuse(401, str(exc), trigger_id)
        return signature

    async def _accept(
        self, trigger: Trigger, delivery_id: str, signature: str, values: dict[str, Any]
    ) -> HookAccepted:
        """Claim the delivery under a new job id and submit the job (the shielded part)."""
        trigger_id = trigger.trigger_id
        job_id = self._new_job_id()
        try:
            claim = await self._claim(trigger_id, delivery_id, signature, job_id)
            if not claim.new:
                assert claim.job_id is not None  # a delivery is claimed with its job id
                logger.info("webhook %s: delivery %s again", trigger_id, delivery_id)
                return HookAccepted(job_id=claim.job_id, duplicate=True, trigger_id=trigger_id)
            try:
                job_id = await self._submit(trigger, delivery_id, signature, values, job_id)
            except (ParameterError, WorkflowError) as exc:
                await self._release(trigger_id, delivery_id)
                _refuse(422, str(exc), trigger_id)
            except SubmissionsClosed as exc:
                await self._release(trigger_id, delivery_id)
                _refuse(503, str(exc), trigger_id)
            except Exception:
                await self._release(trigger_id, delivery_id)
                raise
        finally:
            self._pending.discard(job_id)
        logger.info("webhook %s: delivery %s submitted job %s", trigger_id, delivery_id, job_id)
        return HookAccepted(job_id=job_id, trigger_id=trigger_id)

    async def _claim(self, trigger_id: str, delivery_id: str, signature: str, job_id: str) -> Claim:
        """Claim the delivery for ``job_id``; HookRefused 401 if its signature came before
        under another delivery id. The claims waiting meanwhile are made in one transaction
        (one commit for a flood of deliveries, not one each)."""
        waiting: asyncio.Future[Claim | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(trigger_id, []).append(((delivery_id, signature, job_id), waiting))
        async with self._lock(trigger_id):
            if not waiting.done():  # not taken by an earlier batch: take all that wait
                batch = self._waiting.pop(trigger_id)
                items = [item for item, _ in batch]
                try:
                    claims = await asyncio.to_thread(self.store.claim_deliveries, trigger_id, items)
                except Exception as exc:
                    for _, future in batch:
                        future.set_exception(exc)
                except BaseException:
                    for _, future in batch:
                        future.cancel()
                    raise
                else:
                    for (_, future), claim in zip(batch, claims, strict=True):
                        future.set_result(claim)
        claim = waiting.result()
        if claim is None:
            _refuse(401, "replayed delivery", trigger_id)
        return claim

    async def _move(self, trigger_id: str, delivery_id: str, signature: str, job_id: str) -> None:
        """Claim a delivery claimed already for another job id for ``job_id`` instead."""

        def move() -> None:
            self.store.release_delivery(trigger_id, delivery_id)
            self.store.claim_delivery(trigger_id, delivery_id, signature, job_id)

        async with self._lock(trigger_id):
            await asyncio.to_thread(move)

    async def _submit(
        self,
        trigger: Trigger,
        delivery_id: str,
        signature: str,
        values: dict[str, Any],
        job_id: str,
    ) -> str:
        """Submit the claimed delivery's job; its id (another one, claimed instead, should a
        submitter in the same second have taken ``job_id``)."""
        ref = TriggerRef(kind=TriggerKind.WEBHOOK, id=trigger.trigger_id, delivery_id=delivery_id)
        raw = {k: v for k, v in trigger.raw_parameters.items() if k not in values}
        try:
            for attempt in range(1, _ID_ATTEMPTS + 1):
                try:
                    await self.jobs.submit(
                        trigger.workflow_path,
                        {**trigger.parameters, **values},
                        raw_parameters=raw,
                        priority=trigger.priority,
                        tags=trigger.tags,
                        environment=trigger.environment,
                        max_retries=trigger.max_retries,
                        timeouts=trigger.timeouts,
                        source="webhook",
                        trigger=ref,
                        job_id=job_id,
                    )
                    return job_id
                except JobExists:
                    if attempt == _ID_ATTEMPTS:
                        raise
                taken, job_id = job_id, self._new_job_id()
                self._pending.discard(taken)
                await self._move(trigger.trigger_id, delivery_id, signature, job_id)
        except BaseException:
            self._pending.discard(job_id)  # the one claimed last
            raise
        raise AssertionError("unreachable")

    async def _release(self, trigger_id: str, delivery_id: str) -> None:
        async with self._lock(trigger_id):
            await asyncio.to_thread(self.store.release_delivery, trigger_id, delivery_id)

    def _lock(self, trigger_id: str) -> asyncio.Lock:
        return self._locks.setdefault(trigger_id, asyncio.Lock())

    def _new_job_id(self) -> str:
        job_id = new_run_id()
        while job_id in self._pending:
            job_id = new_run_id()
        self._pending.add(job_id)
        return job_id

    def _settled(self, task: asyncio.Task[HookAccepted]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved, should the caller have stopped waiting


_NO_MATCH: Final = "signature does not match the body"


def _refuse(status: int, detail: str, trigger_id: str | None = None) -> NoReturn:
    # 401s are logged by the HTTP layer's authentication brake, once per client and window
    if trigger_id is not None and status != 401:
        logger.info("webhook %s: refused (%d): %s", trigger_id, status, detail)
    raise HookRefused(status, detail)


def _body_values(body: bytes) -> dict[str, Any]:
    """The parameter values a delivery's body gives: a JSON object (empty body: none)."""
    if not body.strip():
        return {}
    try:
        value = json.loads(body, parse_constant=_not_json)
    except (ValueError, RecursionError) as exc:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise HookRefused(422, f"body is not JSON: {detail}") from None
    if not isinstance(value, dict):
        raise HookRefused(422, f"body must be a JSON object, not {_json_type(value)}")
    where = unicode_problem(value)
    if where is not None:
        raise HookRefused(422, f"body text at {where} is not valid Unicode (a lone surrogate)")
    return value


def _not_json(constant: str) -> NoReturn:
    raise ValueError(f"{constant} is not a JSON value")


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "null"
