"""`hotswap serve --ray`: join the Ray cluster named by `RAY_ADDRESS` (or start one on this
machine), run the application on `host:port`, and stop it on SIGINT/SIGTERM."""

from __future__ import annotations

import logging
import os
import signal
import threading

import ray
from ray import serve

from server.auth import KeyRing, check_bind_address
from server.ray_serve.app import application
from server.settings import Settings

APP_NAME = "hotswap"
logger = logging.getLogger(__name__)


def run(settings: Settings) -> None:
    keys = KeyRing.load(settings.api_keys, settings.api_keys_file)
    refusal = check_bind_address(settings.host, keys)
    if refusal is not None:
        raise SystemExit(refusal)
    if os.environ.get("RAY_ADDRESS"):
        ray.init()  # join the cluster
    else:
        ray.init(include_dashboard=False)  # a local cluster of this machine, lean
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which sets its own
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        serve.run(application(settings), name=APP_NAME, route_prefix="/", blocking=False)
        logger.info(
            "Ray Serve application %r on http://%s:%d (%d engine replicas)",
            APP_NAME,
            settings.host,
            settings.port,
            settings.ray_replicas,
        )
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()
