"""The operator bearer token guarding admin APIs."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from shared.errors import Unauthorized

_bearer = HTTPBearer(auto_error=False)


async def require_admin(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Pass only with ``Authorization: Bearer <TIERFLOW_ADMIN_TOKEN>`` (constant-time compare)."""
    expected: str = request.app.state.admin_token
    given = credentials.credentials if credentials else ""
    if not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise Unauthorized("admin bearer token required")


AdminOnly = Depends(require_admin)
