"""What stands between the network and the model: the body-size limit, the API key, error bodies, access logs.

- The size limit is ASGI middleware, so it holds before any parser buffers the body: a declared
  ``Content-Length`` over the limit is answered 413 at once; a body streamed without one is counted and cut off
  at the limit, and whatever the app then says is replaced by the same 413.
- The API key (optional) is compared in constant time, from ``Authorization: Bearer KEY`` or ``X-API-Key``.
- Every error is ``{"error": message, "status": code}``; a bug is a 500 with a generic message and the traceback
  goes to the server log, never to the client.
- Access log lines carry method, route template, status and latency: no file names, no query values, no
  DICOM attribute.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from typing import Any, Callable

log = logging.getLogger("fetalclip.serve")


def error_body(status: int, message: str) -> dict[str, Any]:
    return {"error": " ".join(str(message).split()) or "error", "status": status}


class BodyLimit:
    """Pure ASGI middleware: 413 for request bodies over ``max_bytes``."""

    def __init__(self, app: Callable, max_bytes: int):
        self.app, self.max_bytes = app, int(max_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_large = int(declared) > self.max_bytes
            except ValueError:
                return await _send_json(send, 400, "Content-Length is not a number")
            if too_large:
                return await _send_json(send, 413, self._message())
        state = {"seen": 0, "over": False, "started": False}

        async def limited_receive():
            message = await receive()
            if message["type"] == "http.request":
                state["seen"] += len(message.get("body", b""))
                if state["seen"] > self.max_bytes:
                    state["over"] = True
                    return {"type": "http.disconnect"}  # the parser stops here; the answer is replaced below
            return message

        async def guarded_send(message):
            if state["over"]:
                if message["type"] == "http.response.start" and not state["started"]:
                    state["started"] = True
                    await _send_json(send, 413, self._message())
                return
            await send(message)

        await self.app(scope, limited_receive, guarded_send)

    def _message(self) -> str:
        return f"the upload is over the limit of {self.max_bytes:,} bytes"


async def _send_json(send, status: int, message: str) -> None:
    body = json.dumps(error_body(status, message)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def key_matches(expected: str | None, authorization: str | None, x_api_key: str | None) -> bool:
    """True without a configured key; otherwise the offered key must match (constant-time comparison)."""
    if not expected:
        return True
    offered = x_api_key or ""
    if authorization and authorization.lower().startswith("bearer "):
        offered = authorization[7:].strip()
    return hmac.compare_digest(offered.encode(), expected.encode())


def route_label(scope: dict) -> str:
    route = getattr(scope.get("route"), "path", None)
    if route:
        return route
    return "/static" if str(scope.get("path", "")).startswith("/static/") else "unmatched"


class AccessLog:
    """Pure ASGI middleware: one log line and the metrics for every HTTP request."""

    def __init__(self, app: Callable, metrics_of: Callable[[], Any]):
        self.app, self.metrics_of = app, metrics_of

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), {"code": 500}

        async def recording_send(message):
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            seconds = time.perf_counter() - started
            route = route_label(scope)
            metrics = self.metrics_of()
            if metrics is not None:
                metrics.observe_request(route, status["code"], seconds)
            log.info("%s %s %d %.1fms", scope.get("method", "?"), route, status["code"], 1000 * seconds)


__all__ = ["AccessLog", "BodyLimit", "error_body", "key_matches", "route_label"]
