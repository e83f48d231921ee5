"""An unread ``Client.subscribe`` stream stays open: the client takes every frame off the
connection as it comes (so keepalive pings are answered) into a bounded buffer.

A real orchestrator and robot in a thread (``served``: a robot heartbeat, hence a
``robot_status`` event, every 0.5 s), with keepalive pings shortened on both sides: the
orchestrator pings every PING_S and closes (1011 "keepalive ping timeout") a connection whose
pong does not come within PING_TIMEOUT_S; the client does the same.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator

import pytest
from helpers import served, write_notebook
from websockets.asyncio import server as ws_server

from casare_nb.client import ClientError
from casare_nb.client import events as client_events
from casare_nb.client.events import job_id_of
from casare_nb.core.models import RunStatus
from casare_nb.orchestrator import websocket as ws_module
from casare_nb.protocol import EventKind
from casare_nb.service_thread import ServiceThread

WAIT = 90.0
PING_S = 0.2
PING_TIMEOUT_S = 0.5


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceThread]:
    root = tmp_path_factory.mktemp("subscribe")
    workflows = root / "workflows"
    workflows.mkdir()
    write_notebook(workflows / "add.ipynb", ["y = n + 1", "print('y is', y)"], params="n: int = 1")
    short = functools.partial(ws_server.serve, ping_interval=PING_S, ping_timeout=PING_TIMEOUT_S)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ws_module, "serve", short)
        patch.setattr(client_events, "PING_INTERVAL_S", PING_S)
        patch.setattr(client_events, "PING_TIMEOUT_S", PING_TIMEOUT_S)
        with served(root / "state", workflows, "robot-s") as thread:
            yield thread


def test_an_unread_subscription_outlives_many_keepalive_pings_then_yields_every_event(
    cluster: ServiceThread,
) -> None:
    """A subscription left unread while four jobs send ~30 events and ten keepalive
    intervals pass is still open: it yields the snapshot and every job's end in order,
    dropped nothing, and then yields the events of a job submitted after."""
    with cluster.client() as client, client.subscribe(("robots", "jobs", "cells")) as events:
        jobs = [client.submit("add.ipynb", {"n": n}).job_id for n in range(4)]
        for job_id in jobs:  # on another connection: this one is not read
            assert client.wait(job_id, timeout=WAIT).status is RunStatus.COMPLETED
        time.sleep(10 * PING_S)  # the behaviour under test: time passes, nothing is read
        snapshot = events.receive(timeout=WAIT)
        assert snapshot.kind is EventKind.ROBOT_STATUS and snapshot.reply_to is not None
        finished: list[str] = []
        while len(finished) < len(jobs):
            event = events.receive(timeout=WAIT)
            if event.kind is EventKind.JOB_FINISHED:
                finished.append(str(job_id_of(event)))
        assert finished == jobs
        assert events.dropped == 0
        later = client.submit("add.ipynb", {"n": 9}).job_id
        while True:
            event = events.receive(timeout=WAIT)
            if job_id_of(event) == later and event.kind is EventKind.JOB_FINISHED:
                break


def test_a_full_buffer_drops_the_oldest_frames_and_counts_them(cluster: ServiceThread) -> None:
    """With a buffer of 3 frames and nothing read, the oldest frames go: the events then
    received are the newest of the two jobs' six, in order, and ``dropped`` counts the rest."""
    with cluster.client() as client, client.subscribe(("jobs",), buffer=3) as events:
        sent: list[tuple[str, EventKind]] = []
        for n in range(2):
            job_id = client.submit("add.ipynb", {"n": n}).job_id
            assert client.wait(job_id, timeout=WAIT).status is RunStatus.COMPLETED
            kinds = (EventKind.JOB_QUEUED, EventKind.JOB_STARTED, EventKind.JOB_FINISHED)
            sent += [(job_id, kind) for kind in kinds]
        received: list[tuple[str, EventKind]] = []
        while received[-1:] != sent[-1:]:
            event = events.receive(timeout=WAIT)
            received.append((str(job_id_of(event)), event.kind))
    assert 3 <= len(received) < len(sent)
    assert received == sent[-len(received) :]
    assert events.dropped >= len(sent) - len(received)


def test_a_buffer_of_no_frame_is_refused(cluster: ServiceThread) -> None:
    """subscribe(buffer=0) is a ClientError, not a stream that keeps nothing."""
    with cluster.client() as client, pytest.raises(ClientError, match="buffer"):
        client.subscribe(("jobs",), buffer=0)
