"""``/api/tokens``: bearer tokens for robots, monitors and clients."""

import asyncio

from fastapi import APIRouter, Response

from casare_nb.api import CreateToken, ErrorBody, TokenCreated, TokenInfo
from casare_nb.core.errors import QueueError, one_line
from casare_nb.orchestrator.http.deps import AUTH_ERRORS, Auth, Orch, error

__all__ = ["router"]

router = APIRouter(prefix="/api/tokens", tags=["tokens"])


@router.post(
    "",
    status_code=201,
    response_model=TokenCreated,
    responses={**AUTH_ERRORS, 409: {"model": ErrorBody, "description": "Name in use."}},
)
async def create_token(body: CreateToken, _: Auth, orch: Orch) -> TokenCreated:
    """A new token, shown this once."""
    try:
        token = await asyncio.to_thread(orch.create_token, body.name)
    except QueueError as exc:
        raise error(409, one_line(exc)) from None
    return TokenCreated(name=body.name, token=token)


@router.get("", response_model=list[TokenInfo], responses=AUTH_ERRORS)
async def list_tokens(_: Auth, orch: Orch) -> list[TokenInfo]:
    """Every token ever created, revoked ones too; never a token or its hash."""
    rows = await asyncio.to_thread(orch.stores.tokens.list_tokens)
    return [TokenInfo.model_validate(row) for row in rows]


@router.delete(
    "/{name}",
    status_code=204,
    responses={**AUTH_ERRORS, 404: {"model": ErrorBody, "description": "Unknown token."}},
)
async def revoke_token(name: str, _: Auth, orch: Orch) -> Response:
    """Revoke a token; connections that use it are closed."""
    rows = await asyncio.to_thread(orch.stores.tokens.list_tokens)
    if not any(row["name"] == name for row in rows):
        raise error(404, f"unknown token {name}")
    try:
        await asyncio.to_thread(orch.revoke_token, name)
    except QueueError as exc:
        raise error(404, one_line(exc)) from None
    return Response(status_code=204)
