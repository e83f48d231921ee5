"""The TokenStore interface, run against every backend: tokens verify while live, a name has
one live token, revoked names can be used again, and the token itself is never listed."""

from __future__ import annotations

import pytest

from casare_nb.core.errors import QueueError
from casare_nb.store.interfaces import Stores


def test_a_created_token_verifies_and_is_never_listed(stores: Stores) -> None:
    """create_token answers a token that verifies to its name; nothing else does; the list
    has names and times only."""
    token = stores.tokens.create_token("robot-a")
    assert len(token) >= 40
    assert stores.tokens.verify_token(token) == "robot-a"
    assert stores.tokens.verify_token(token + "x") is None
    assert stores.tokens.verify_token("") is None
    listed = stores.tokens.list_tokens()
    assert [set(t) for t in listed] == [{"name", "created_at", "revoked_at"}]
    assert listed[0]["name"] == "robot-a" and listed[0]["revoked_at"] is None
    assert token not in repr(listed)


def test_revoked_tokens_stop_verifying_and_names_can_be_reused(stores: Stores) -> None:
    """A live name is unique; revoking twice is fine; a revoked name gets a new token; an
    unknown name cannot be revoked."""
    tokens = stores.tokens
    first = tokens.create_token("robot-a")
    with pytest.raises(QueueError, match="token robot-a already exists"):
        tokens.create_token("robot-a")
    tokens.revoke_token("robot-a")
    tokens.revoke_token("robot-a")
    assert tokens.verify_token(first) is None
    second = tokens.create_token("robot-a")
    assert second != first
    assert tokens.verify_token(second) == "robot-a"
    assert tokens.verify_token(first) is None
    with pytest.raises(QueueError, match="unknown token ghost"):
        tokens.revoke_token("ghost")
    listed = tokens.list_tokens()
    assert [t["name"] for t in listed] == ["robot-a", "robot-a"]
    assert [t["revoked_at"] is None for t in listed] == [False, True]
    with pytest.raises(QueueError, match="needs a name"):
        tokens.create_token("")


def test_a_verified_token_is_known_from_memory_until_tokens_change(stores: Stores) -> None:
    """known_token answers a token verified since the tokens last changed (no query), and
    nothing once a token is revoked or created: a revoked token is refused at once."""
    tokens = stores.tokens
    first = tokens.create_token("robot-a")
    assert tokens.known_token(first) is None  # not verified yet
    assert tokens.verify_token(first) == "robot-a"
    assert tokens.known_token(first) == "robot-a"
    other = tokens.create_token("robot-b")
    assert tokens.known_token(first) is None  # a change forgets what was known
    assert tokens.verify_token(first) == "robot-a" and tokens.verify_token(other) == "robot-b"
    tokens.revoke_token("robot-a")
    assert tokens.known_token(first) is None and tokens.verify_token(first) is None
    assert tokens.known_token(other) is None and tokens.verify_token(other) == "robot-b"
    assert tokens.known_token("") is None and tokens.known_token(first + "x") is None
