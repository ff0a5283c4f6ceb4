"""The HTTP edge: what a request must pass before the app reads a byte of its body.

In order, from the headers alone: in keyless (loopback) mode the browser guard (`Host` names
a loopback host, against DNS rebinding; `Origin` is absent or loopback, against cross-site
posts from web pages), else the API key and its role; the body's content type; its declared
size. Then the body is counted while it streams: past the route's cap the request is
answered 413 and the app reads no further."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.auth import AuthError, KeyRing, Role
from server.errors import ForeignCaller, HotswapError, PayloadTooLarge, UnsupportedMediaType
from server.http.errors import auth_response, hotswap_response

logger = logging.getLogger(__name__)


class BodyType(StrEnum):
    """The media type a route's body must have."""

    JSON = "application/json"
    MULTIPART = "multipart/form-data"


@dataclass(frozen=True)
class EdgeRule:
    """What one route asks of a request: the key's role (None: public), the body's media
    type and its largest size in bytes."""

    role: Role | None
    body: BodyType
    max_body_bytes: int


class EdgeGuard:
    """ASGI middleware applying the `EdgeRule` of the route a request is for: the first of
    `rules` whose route matches its path and method, else one matching its path only (the
    router answers 405), else `fallback`."""

    def __init__(
        self,
        app: ASGIApp,
        keys: KeyRing,
        rules: Sequence[tuple[BaseRoute, EdgeRule]],
        fallback: EdgeRule,
    ) -> None:
        self.app = app
        self.keys = keys
        self.rules = rules
        self.fallback = fallback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rule = self.rule_for(scope)
        headers = Headers(scope=scope)
        try:
            self._admit(rule, headers)
        except (AuthError, HotswapError) as exc:
            await _refuse(exc, scope, receive, send)
            return
        await _serve_capped(self.app, rule.max_body_bytes, scope, receive, send)

    def rule_for(self, scope: Scope) -> EdgeRule:
        partial: EdgeRule | None = None
        for route, rule in self.rules:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return rule
            if match is Match.PARTIAL and partial is None:
                partial = rule
        return partial or self.fallback

    def _admit(self, rule: EdgeRule, headers: Headers) -> None:
        """Raise the refusal the headers earn, if any (the checks read no body)."""
        if rule.role is not None:
            if self.keys.enabled:
                self.keys.check(headers.get("authorization"), rule.role)
            else:
                _check_browser_headers(headers)
        if _has_body(headers):
            media_type = headers.get("content-type", "").partition(";")[0].strip().lower()
            if media_type != rule.body:
                raise UnsupportedMediaType(
                    f"The Content-Type header must be {rule.body.value} for this route "
                    f"(got {media_type or 'none'!r})."
                )
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > rule.max_body_bytes:
            raise _too_large(rule.max_body_bytes)


def _has_body(headers: Headers) -> bool:
    return "transfer-encoding" in headers or headers.get("content-length", "0") != "0"


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is larger than this route's limit of {limit} bytes.")


def _check_browser_headers(headers: Headers) -> None:
    """Without keys, only loopback callers that are not web pages: a `Host` naming a loopback
    host (any port: port forwarding keeps the name), and no `Origin` or a loopback one."""
    host = headers.get("host", "")
    if not _is_loopback_netloc(host):
        raise ForeignCaller(
            f"The Host header {host[:100]!r} is not a loopback name: a server without API keys "
            "answers only localhost, 127.0.0.1 or ::1 (set keys to serve other names)."
        )
    origin = headers.get("origin")
    if origin is not None:
        scheme, _, netloc = origin.partition("://")
        if scheme not in ("http", "https") or not _is_loopback_netloc(netloc):
            raise ForeignCaller(
                f"The Origin header {origin[:100]!r} is not a loopback origin: a server without "
                "API keys does not answer web pages of other sites."
            )


def _is_loopback_netloc(netloc: str) -> bool:
    """`host[:port]` whose host is `localhost` or a loopback address (no user, no path)."""
    if not netloc or any(c in netloc for c in "@/?#\\"):
        return False
    try:
        hostname = urlsplit(f"//{netloc}").hostname
        return hostname == "localhost" or (
            hostname is not None and ipaddress.ip_address(hostname).is_loopback
        )
    except ValueError:
        return False


async def _refuse(
    exc: AuthError | HotswapError, scope: Scope, receive: Receive, send: Send
) -> None:
    logger.info("Refused %s %s: %s", scope["method"], scope["path"], exc)
    response = auth_response(exc) if isinstance(exc, AuthError) else hotswap_response(exc)
    await response(scope, receive, send)


async def _serve_capped(
    app: ASGIApp, limit: int, scope: Scope, receive: Receive, send: Send
) -> None:
    """Run `app` with a `receive` that stops past `limit` body bytes. Whatever the app makes of
    that (the framework reports a body it could not read as a 400), the caller gets a 413."""
    received = 0
    refusal: PayloadTooLarge | None = None
    started = False

    async def counted() -> Message:
        nonlocal received, refusal
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                refusal = _too_large(limit)
                raise refusal
        return message

    async def send_unless_refused(message: Message) -> None:
        nonlocal started
        if refusal is None:
            started = started or message["type"] == "http.response.start"
            await send(message)

    try:
        await app(scope, counted, send_unless_refused)
    except Exception:
        if refusal is None:
            raise
    if refusal is not None and not started:
        await _refuse(refusal, scope, receive, send)
