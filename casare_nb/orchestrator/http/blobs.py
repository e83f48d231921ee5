"""``/api/blobs/{sha256}``: the bytes of one checkpoint blob (a pickled variable), for a
debug kernel restoring a job's namespace away from the robots."""

import asyncio

from fastapi import APIRouter, Path, Response

from casare_nb.orchestrator.http.deps import AUTH_ERRORS, Orch, UserAuth, error, with_errors

__all__ = ["router"]

router = APIRouter(prefix="/api/blobs", tags=["checkpoints"], responses=AUTH_ERRORS)

_SHA256 = Path(pattern="^[0-9a-f]{64}$", description="The blob's sha256, hex.")


@router.get(
    "/{sha256}",
    response_class=Response,
    responses={
        **with_errors(404, "No such blob."),
        200: {"content": {"application/octet-stream": {}}, "description": "The blob's bytes."},
    },
)
async def blob(sha256: str = _SHA256, *, _: UserAuth, orch: Orch) -> Response:
    """The blob's bytes."""
    data = await asyncio.to_thread(orch.blob, sha256)
    if data is None:
        raise error(404, f"blob {sha256} is not stored")
    return Response(data, media_type="application/octet-stream")
