"""Failed authentication is braked: after too many failures from one client in a window,
bad bearer tokens and bad webhook signatures answer 429 with Retry-After (a valid token
still passes), and the failures are logged once per client and window with a count."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import pytest
from helpers import write_notebook

from casare_nb.core.signing import signed_headers
from casare_nb.orchestrator.brake import DEFAULT_LIMIT, AuthBrake
from casare_nb.orchestrator.service import OrchestratorService
from casare_nb.service_thread import ServiceThread


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_client_is_braked_after_the_limit_until_its_window_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """limit failures pass; the next ones must wait the rest of the window; 2,000 failures
    log one warning, then one count when the window ends (the audit log has each of them);
    other clients are not braked."""
    clock = Clock()
    brake = AuthBrake(limit=5, window_s=60.0, clock=clock)

    def logged() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "casare_nb.orchestrator.http"]

    with caplog.at_level(logging.WARNING, logger="casare_nb.orchestrator.http"):
        for _ in range(5):
            assert brake.wait_s("10.0.0.1") is None
            brake.failed("10.0.0.1", "invalid or revoked token")
        clock.now += 20
        assert brake.wait_s("10.0.0.1") == 40
        assert brake.wait_s("10.0.0.2") is None
        for _ in range(1995):
            brake.failed("10.0.0.1", "invalid or revoked token")
        assert logged() == ["failed authentication from 10.0.0.1: invalid or revoked token"]
        clock.now += 40
        assert brake.wait_s("10.0.0.1") is None
    assert logged()[-1] == "1999 more failed authentications from 10.0.0.1 in 60 s"
    audited = [r for r in caplog.records if r.name == "casare_nb.audit"]
    assert len(audited) == 2000


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrchestratorService]:
    root = tmp_path_factory.mktemp("brake")
    write_notebook(root / "w.ipynb", ["y = 1"])
    found = OrchestratorService(
        root / "state", port=0, http_port=0, workflows_dir=root, environ={"HOOK": "secret"}
    )
    with ServiceThread(found):
        yield found


def test_bad_tokens_get_429_with_retry_after_and_a_good_token_still_works(
    service: OrchestratorService,
) -> None:
    """Past the limit a bad token answers 429 with Retry-After; the admin token from the
    same address still answers 200."""
    with httpx.Client(base_url=service.http_url, timeout=30) as http:
        codes = [
            http.get("/api/jobs", headers={"Authorization": "Bearer wrong"}).status_code
            for _ in range(DEFAULT_LIMIT + 5)
        ]
        assert codes[:DEFAULT_LIMIT] == [401] * DEFAULT_LIMIT
        assert set(codes[DEFAULT_LIMIT:]) == {429}
        late = http.get("/api/jobs", headers={"Authorization": "Bearer wrong"})
        assert late.status_code == 429 and int(late.headers["Retry-After"]) >= 1
        assert "too many failed authentications" in late.json()["detail"]
        good = {"Authorization": f"Bearer {service.admin_token}"}
        assert http.get("/api/jobs", headers=good).status_code == 200


def test_bad_webhook_signatures_are_braked_too(service: OrchestratorService) -> None:
    """Past the limit, forged deliveries answer 429; a correctly signed one still runs."""
    with httpx.Client(base_url=service.http_url, timeout=30) as http:
        hook = http.post(
            "/api/triggers",
            json={"kind": "webhook", "workflow": "w.ipynb", "secret_env": "HOOK"},
            headers={"Authorization": f"Bearer {service.admin_token}"},
        ).json()
        url = f"/hooks/{hook['trigger']['trigger_id']}"
        forged = signed_headers(b"guess", b"{}")
        codes = {http.post(url, content=b"{}", headers=forged).status_code for _ in range(40)}
        assert 429 in codes
        good = http.post(url, content=b"{}", headers=signed_headers(b"secret", b"{}"))
        assert good.status_code == 200, good.text


def test_bad_tokens_on_the_websocket_are_braked_and_a_good_one_still_connects(
    service: OrchestratorService,
) -> None:
    """Past the limit a WebSocket upgrade with a bad token is refused 429 (not 401); one
    with a valid token still connects."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    statuses = []
    for _ in range(DEFAULT_LIMIT + 3):
        with pytest.raises(InvalidStatus) as refused:
            connect(service.ws_url, additional_headers={"Authorization": "Bearer nope"})
        statuses.append(refused.value.response.status_code)
    assert 429 in statuses[DEFAULT_LIMIT - 1 :] and statuses[0] in (401, 429)
    good = {"Authorization": f"Bearer {service.admin_token}"}
    with connect(service.ws_url, additional_headers=good, open_timeout=30):
        pass
