"""Message ids (casare_nb.protocol): unique without one os.urandom per message; run ids
(casare_nb.local.new_run_id): never the same twice in a process."""

from __future__ import annotations

import os
from datetime import UTC, datetime, tzinfo

import pytest

from casare_nb.protocol import HeartbeatAck


def test_message_ids_are_unique_within_a_process_and_across_a_fork() -> None:
    """Ids are 32 hex digits, never repeated in a process nor by a forked child."""
    ids = {HeartbeatAck(seq=1).id for _ in range(1000)}
    assert len(ids) == 1000 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report the ids it makes, then leave at once
        os.close(read)
        with os.fdopen(write, "w") as out:
            out.write(" ".join(HeartbeatAck(seq=1).id for _ in range(1000)))
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as inp:
        child = set(inp.read().split())
    os.waitpid(pid, 0)
    mine = {HeartbeatAck(seq=1).id for _ in range(1000)}
    assert len(child) == 1000 and not child & (ids | mine)
    assert {i[:16] for i in child}.isdisjoint({i[:16] for i in ids})


def test_run_ids_never_repeat_in_a_process_even_when_random_bytes_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """new_run_id draws again when its 3 random bytes repeat within the second: 5 ids from a
    source that repeats every value are 5 distinct ids of the documented shape."""
    from casare_nb.core import ids as local

    draws = iter(["aaaaaa", "aaaaaa", "bbbbbb", "aaaaaa", "bbbbbb", "cccccc", "dddddd", "eeeeee"])
    monkeypatch.setattr(local.secrets, "token_hex", lambda n: next(draws))
    monkeypatch.setattr(local, "_issued", ("", set()))
    frozen = datetime(2026, 11, 27, 8, 0, 0, tzinfo=UTC)

    class Frozen(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> Frozen:
            return cls.fromtimestamp(frozen.timestamp(), tz)

    monkeypatch.setattr(local, "datetime", Frozen)
    ids = [local.new_run_id() for _ in range(5)]
    assert ids == [f"20261127-080000-{x * 6}" for x in "abcde"]
