"""``/api/tokens``: bearer tokens for robots, monitors and clients. Admin tokens only; every
creation and revocation is audited."""

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Response

from casare_nb.api import CreateToken, ErrorBody, TokenCreated, TokenInfo
from casare_nb.core.errors import QueueError, one_line
from casare_nb.core.tokens import Holder, TokenRole
from casare_nb.orchestrator import audit
from casare_nb.orchestrator.http.deps import AUTH_ERRORS, Needs, Orch, error

__all__ = ["router"]

router = APIRouter(prefix="/api/tokens", tags=["tokens"])


@router.post(
    "",
    status_code=201,
    response_model=TokenCreated,
    responses={**AUTH_ERRORS, 409: {"model": ErrorBody, "description": "Name in use."}},
)
async def create_token(
    body: CreateToken,
    holder: Annotated[Holder, Depends(Needs(TokenRole.ADMIN, "creating a token"))],
    orch: Orch,
) -> TokenCreated:
    """A new token with its role (``user`` when not given), shown this once."""
    try:
        token = await asyncio.to_thread(orch.create_token, body.name, body.role)
    except QueueError as exc:
        audit.denied(holder, "create_token", body.name, one_line(exc), outcome="error")
        raise error(409, one_line(exc)) from None
    audit.succeeded(holder, "create_token", body.name, f"role {body.role.value}")
    return TokenCreated(name=body.name, token=token, role=body.role)


@router.get("", response_model=list[TokenInfo], responses=AUTH_ERRORS)
async def list_tokens(
    _: Annotated[Holder, Depends(Needs(TokenRole.ADMIN, "listing tokens"))], orch: Orch
) -> list[TokenInfo]:
    """Every token ever created, revoked ones too, with its role (null: created before
    roles, acts as admin); never a token or its hash."""
    rows = await asyncio.to_thread(orch.stores.tokens.list_tokens)
    return [TokenInfo.model_validate(row) for row in rows]


@router.delete(
    "/{name}",
    status_code=204,
    responses={**AUTH_ERRORS, 404: {"model": ErrorBody, "description": "Unknown token."}},
)
async def revoke_token(
    name: str,
    holder: Annotated[Holder, Depends(Needs(TokenRole.ADMIN, "revoking a token"))],
    orch: Orch,
) -> Response:
    """Revoke a token; connections that use it are closed."""
    rows = await asyncio.to_thread(orch.stores.tokens.list_tokens)
    if not any(row["name"] == name for row in rows):
        audit.denied(holder, "revoke_token", name, f"unknown token {name}", outcome="error")
        raise error(404, f"unknown token {name}")
    try:
        await asyncio.to_thread(orch.revoke_token, name)
    except QueueError as exc:
        audit.denied(holder, "revoke_token", name, one_line(exc), outcome="error")
        raise error(404, one_line(exc)) from None
    audit.succeeded(holder, "revoke_token", name)
    return Response(status_code=204)
