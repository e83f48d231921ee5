"""Message ids (casare_nb.protocol): unique without one os.urandom per message."""

from __future__ import annotations

import os

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
