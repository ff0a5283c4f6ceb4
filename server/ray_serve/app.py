"""The Ray Serve application: the hotswap FastAPI app as the ingress (one HTTP port, the same
routes, errors, registry and metrics as `hotswap serve`), in front of the engine replicas.

`serve run deploy/ray/serve_config.yaml` and `hotswap serve --ray` both build it with
`build_app`; settings come from the `HOTSWAP_*` environment, `args` override them."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import ray
from fastapi import FastAPI, Request, Response
from pydantic import BaseModel, ConfigDict
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from server.auth import KeyRing, check_bind_address
from server.http.app import create_app
from server.ray_serve.engine_replica import EngineReplica
from server.ray_serve.remote_engine import RemoteEngine, served_by
from server.settings import Settings

ENGINE_DEPLOYMENT = "EngineReplica"
INGRESS_DEPLOYMENT = "HotswapIngress"
REPLICA_HEADER = "x-hotswap-replica"
SECRET_SETTINGS = {"database_url", "api_keys"}


class AppArgs(BaseModel):
    """Arguments of `serve run ... KEY=VALUE` / the config's `args`: any `Settings` field
    (e.g. `ray_replicas: 4`, `max_loras: 16`) over the `HOTSWAP_*` environment."""

    model_config = ConfigDict(extra="allow")


async def _served_by_middleware(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    """Names, in `x-hotswap-replica`, the engine replica(s) that answered (not for streams:
    their headers leave before the engine is called)."""
    answered: list[str] = []
    served_by.set(answered)
    response = await call_next(request)
    if answered:
        response.headers[REPLICA_HEADER] = ",".join(dict.fromkeys(answered))
    return response


@serve.ingress()
class HotswapIngress:
    """The ordinary hotswap app; its engine is `RemoteEngine` over the replicas' handle."""

    def __init__(self, replicas: DeploymentHandle, settings_json: dict[str, Any]) -> None:
        self._replicas = replicas
        self._settings = Settings(**settings_json)

    def __serve_build_asgi_app__(self) -> FastAPI:
        settings = self._settings
        keys = KeyRing.load(settings.api_keys, settings.api_keys_file)
        refusal = bind_refusal(keys, settings.host, _proxy_host())
        if refusal is not None:
            raise RuntimeError(refusal)
        app = create_app(
            settings, keys, engine_factory=functools.partial(RemoteEngine, replicas=self._replicas)
        )
        app.middleware("http")(_served_by_middleware)
        return app


def bind_refusal(keys: KeyRing, grpc_host: str, proxy_host: str) -> str | None:
    """`check_bind_address` for both of the ingress's listeners: Ray's HTTP proxy
    (`http_options.host`) and the app's gRPC server (`HOTSWAP_HOST`)."""
    return check_bind_address(proxy_host, keys) or check_bind_address(grpc_host, keys)


def _proxy_host() -> str:
    """The address Ray Serve's HTTP proxies listen on (`http_options.host`)."""
    client = serve.context._get_global_client()
    return str(client.http_config.host) if client is not None else "127.0.0.1"


def replica_gpus(settings: Settings) -> float:
    """GPUs per engine replica: the setting, else 1 when the cluster has GPUs, else 0."""
    if settings.ray_gpus_per_replica is not None:
        return settings.ray_gpus_per_replica
    return 1.0 if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def build_app(args: dict[str, Any] | None = None) -> Application:
    """Ray Serve's application builder (`import_path: server.ray_serve.app:build_app`): the
    `HOTSWAP_*` environment, overridden by `args`."""
    overrides = AppArgs.model_validate(args or {}).model_dump()
    return application(Settings.model_validate({**Settings().model_dump(), **overrides}))


def application(settings: Settings) -> Application:
    """`ray_replicas` engine replicas behind one ingress."""
    # Secrets stay out of the deployments' arguments (Ray stores and shows those): every
    # replica reads them from its own environment (`HOTSWAP_DATABASE_URL`, `HOTSWAP_API_KEYS`).
    settings_json = settings.model_dump(mode="json", exclude=SECRET_SETTINGS)
    engine = serve.deployment(
        name=ENGINE_DEPLOYMENT,
        num_replicas=settings.ray_replicas,
        # what one engine schedules at once: more spills onto other replicas
        max_ongoing_requests=settings.max_num_seqs,
        ray_actor_options={
            "num_cpus": settings.ray_cpus_per_replica,
            "num_gpus": replica_gpus(settings),
        },
    )(EngineReplica)
    ingress = serve.deployment(
        name=INGRESS_DEPLOYMENT,
        num_replicas=1,
        max_ongoing_requests=settings.max_queued_requests,
        ray_actor_options={"num_cpus": 0},
    )(HotswapIngress)
    return ingress.bind(engine.bind(settings_json), settings_json)
