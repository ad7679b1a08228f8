"""Pure ASGI middlewares: the API key check and request ids."""

import hmac
import json
import uuid
from typing import Any, Dict

from .errors import error_body


# Served without a key: the health check, and the voice chat page and its static files
# (they hold no data; the page asks for the key and sends it on its WebSocket).
PUBLIC_PATHS = ("/health", "/", "/favicon.ico")
PUBLIC_PREFIXES = ("/static/",)


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def bearer_matches(authorization: bytes, expected: bytes) -> bool:
    """Whether an ``Authorization`` header's raw value is ``Bearer <expected>`` (the scheme
    in any case, as RFC 7235 says), compared in constant time."""
    scheme, _, key = authorization.strip().partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(key.strip(), expected)


class AuthMiddleware:
    """Every HTTP request but `is_public` ones needs ``Authorization: Bearer KEY`` (the
    scheme in any case, as RFC 7235 says); else 401 with OpenAI's error body. WebSocket
    sessions check the key themselves (`pylfm.server.realtime`)."""

    def __init__(self, app: Any, api_key: str) -> None:
        self.app = app
        self.expected = api_key.encode("utf-8")

    async def __call__(self, scope: Dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not is_public(scope.get("path", "")):
            got = b""
            for k, v in scope.get("headers", []):
                if k == b"authorization":
                    got = v.strip()
                    break
            if not bearer_matches(got, self.expected):
                message = ("missing API key: send 'Authorization: Bearer KEY'" if not got else "invalid API key")
                body = json.dumps(error_body(message, "invalid_request_error", "invalid_api_key")).encode()
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"www-authenticate", b"Bearer"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


class RequestIdMiddleware:
    """Every request gets an id (the client's ``X-Request-ID`` if it is sane, else a new
    one), kept in ``request.state.request_id`` for the logs and sent back in the
    ``X-Request-ID`` header."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = ""
        for k, v in scope.get("headers", []):
            if k == b"x-request-id":
                rid = v.decode("latin-1").strip()
        if not (0 < len(rid) <= 64 and all(c.isalnum() or c in "-_.:" for c in rid)):
            rid = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message: Dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": list(message.get("headers", [])) + [(b"x-request-id", rid.encode())]}
            await send(message)

        await self.app(scope, receive, send_with_id)


def request_id(request: Any) -> str:
    """The id `RequestIdMiddleware` gave ``request`` ("-" outside it)."""
    return getattr(request.state, "request_id", "-")
