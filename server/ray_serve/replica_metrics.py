"""Each engine replica's Prometheus registry on a port of its own: behind any API key when
keys are set (unless `public_metrics`), and on loopback only when there are none (the same
rule as `server.auth.check_bind_address`)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from server.auth import AuthError, KeyRing, Role

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def scrape_app(keys: KeyRing, public: bool) -> WsgiApp:
    """The registry as a WSGI app; with keys and not `public`, a scrape needs any key
    (Prometheus: `authorization: {credentials: <key>}` in the scrape config)."""
    scrape: WsgiApp = make_wsgi_app(REGISTRY)
    if public or not keys.enabled:
        return scrape

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            keys.check(environ.get("HTTP_AUTHORIZATION"), Role.INFER)
        except AuthError as exc:
            reason = "Unauthorized" if exc.status == 401 else "Forbidden"
            start_response(
                f"{exc.status} {reason}",
                [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")],
            )
            return [exc.message.encode()]
        return scrape(environ, start_response)

    return guarded


def scrape_host(keys: KeyRing, node_ip: str) -> str:
    """The node's address with keys; loopback without (no keys: nothing leaves the machine)."""
    return node_ip if keys.enabled else "127.0.0.1"


def serve_scrapes(app: WsgiApp, host: str) -> WSGIServer:
    """Serve `app` on a free port of `host` from a daemon thread; returns the server."""
    server = make_server(host, 0, app, ThreadingWSGIServer, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, name="replica-metrics", daemon=True).start()
    return server


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged."""
