"""The TokenStore interface, run against every backend: tokens verify while live, a name has
one live token, revoked names can be used again, and the token itself is never listed."""

from __future__ import annotations

import pytest

from casare_nb.core.errors import QueueError
from casare_nb.core.tokens import Holder, TokenRole
from casare_nb.store.interfaces import Stores


def name_of(holder: Holder | None) -> str | None:
    return None if holder is None else holder.name


def test_a_created_token_verifies_and_is_never_listed(stores: Stores) -> None:
    """create_token answers a token that verifies to its name and role (user by default);
    nothing else does; the list has names, roles and times only."""
    token = stores.tokens.create_token("robot-a")
    assert len(token) >= 40
    assert stores.tokens.verify_token(token) == Holder("robot-a", TokenRole.USER)
    assert stores.tokens.verify_token(token + "x") is None
    assert stores.tokens.verify_token("") is None
    listed = stores.tokens.list_tokens()
    assert [set(t) for t in listed] == [{"name", "role", "created_at", "revoked_at"}]
    assert listed[0]["role"] == "user"
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
    assert name_of(tokens.verify_token(second)) == "robot-a"
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
    assert name_of(tokens.verify_token(first)) == "robot-a"
    assert name_of(tokens.known_token(first)) == "robot-a"
    other = tokens.create_token("robot-b")
    assert tokens.known_token(first) is None  # a change forgets what was known
    assert name_of(tokens.verify_token(first)) == "robot-a"
    assert name_of(tokens.verify_token(other)) == "robot-b"
    tokens.revoke_token("robot-a")
    assert tokens.known_token(first) is None and tokens.verify_token(first) is None
    assert tokens.known_token(other) is None and name_of(tokens.verify_token(other)) == "robot-b"
    assert tokens.known_token("") is None and tokens.known_token(first + "x") is None


def test_a_token_keeps_its_role_and_an_unknown_role_is_refused(stores: Stores) -> None:
    """Each role is stored with its token, verified and remembered with it (a revoked and
    recreated name takes its new role); a role that does not exist is a one-line error."""
    tokens = stores.tokens
    made = {role: tokens.create_token(f"t-{role.value}", role) for role in TokenRole}
    for role, token in made.items():
        assert tokens.verify_token(token) == Holder(f"t-{role.value}", role)
        assert tokens.known_token(token) == Holder(f"t-{role.value}", role)
    assert {t["name"]: t["role"] for t in tokens.list_tokens()} == {
        "t-robot": "robot",
        "t-user": "user",
        "t-admin": "admin",
    }
    tokens.revoke_token("t-robot")
    again = tokens.create_token("t-robot", TokenRole.ADMIN)
    assert tokens.verify_token(again) == Holder("t-robot", TokenRole.ADMIN)
    assert tokens.verify_token(made[TokenRole.ROBOT]) is None
    with pytest.raises(QueueError, match="unknown role 'root': one of robot, user, admin"):
        tokens.create_token("t-root", "root")  # type: ignore[arg-type]
