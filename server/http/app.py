"""The FastAPI application: start-up and shutdown of the engine, routers, error mapping."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import REGISTRY

from adapters.archive import ArchiveLimits
from adapters.base_spec import spec_from_hf_config
from adapters.errors import AdapterConflict, AdapterError, AdapterNotFound
from adapters.registry import AdapterRegistry
from server.adapter_service import AdapterService
from server.auth import AuthError, KeyRing, Role, check_bind_address
from server.base_model import BaseModel, resolve_base_model
from server.catalog import ModelCatalog
from server.engine import Engine
from server.engine_supervisor import EngineSupervisor
from server.errors import HotswapError, InvalidRequest
from server.generation import GenerationService
from server.http.routes import adapters, generate, health, openai, stats
from server.http.sse import error_body, retry_headers
from server.http.state import ServerState, require
from server.metrics.labels import LabelTracker
from server.request_log import request_id_middleware
from server.requests import validation_message
from server.schema_policy import SchemaPolicy
from server.settings import Settings
from server.structured import CompileGuard

logger = logging.getLogger(__name__)

# Builds the engine the app serves with: the in-process `Engine`, or one whose vLLM runs
# elsewhere (`server.ray_serve.remote_engine.RemoteEngine`).
EngineFactory = Callable[[Settings, BaseModel], Engine]


async def _start(app: FastAPI, settings: Settings, engine_factory: EngineFactory) -> None:
    """Prepare the base model, open the registry, start the engine and load the promoted
    adapters, without blocking the probes; then supervise the engine (restart it if its
    core dies) until the server stops."""
    base = await asyncio.to_thread(
        resolve_base_model, settings.base_model, settings.home, settings.served_model_name
    )
    registry = AdapterRegistry(
        settings.home,
        spec_from_hf_config(
            base.path, fingerprint=base.fingerprint, max_lora_rank=settings.max_lora_rank
        ),
        limits=ArchiveLimits(max_archive_bytes=settings.max_upload_bytes),
        database_url=settings.database_url.get_secret_value() if settings.database_url else None,
        store_dir=settings.adapter_store_dir,
    )
    engine = engine_factory(settings, base)
    app.state.engine = engine  # stopped by the lifespan, even while it starts
    guard = CompileGuard(
        base.path,
        timeout_s=settings.schema_compile_timeout_s,
        memory_limit_mb=settings.schema_compile_memory_mb,
        max_grammar_mb=settings.schema_max_grammar_mb,
        vocab_cache_dir=settings.schema_vocab_cache_dir,
    )
    app.state.schema_guard = guard  # closed by the lifespan, even if start-up fails later
    await asyncio.gather(asyncio.to_thread(engine.start_blocking), asyncio.to_thread(guard.start))
    service = AdapterService(registry, engine)
    for name, folder in settings.adapters.items():
        await _register_folder(service, name, folder)
    await service.warm_promoted(settings.max_loras)
    catalog = ModelCatalog(base.name, registry)
    labels = LabelTracker(settings.drift_window_size)
    REGISTRY.register(labels)
    generation = GenerationService(
        engine,
        catalog,
        settings.max_model_len,
        settings.default_max_tokens,
        settings.max_queued_requests,
        labels,
        SchemaPolicy(guard, settings.schema_limits, settings.schema_max_retries),
    )
    app.state.hotswap = ServerState(
        engine=engine, catalog=catalog, generation=generation, adapters=service, labels=labels
    )
    supervisor = EngineSupervisor(
        engine,
        lambda: service.warm_promoted(settings.max_loras),
        check_interval_s=settings.engine_check_interval_s,
        max_attempts=settings.engine_restart_attempts,
        retry_delay_s=settings.engine_restart_delay_s,
    )
    await supervisor.watch()  # until the server stops, or recovery failed (not ready)


async def _register_folder(service: AdapterService, name: str, folder: Path) -> None:
    """`--adapter NAME=PATH`: store the folder in the registry as a version of NAME."""
    with tempfile.TemporaryDirectory(prefix="hotswap-adapter-") as tmp:
        archive = shutil.make_archive(str(Path(tmp) / name), "gztar", root_dir=folder)
        result = await service.upload(Path(archive), name=name)
    logger.info(
        "Adapter %s@%d from %s (%s)",
        name,
        result.adapter.version,
        folder,
        "new" if result.created else "already registered",
    )


_ADAPTER_ERROR_STATUS: dict[type[AdapterError], int] = {
    AdapterNotFound: 404,
    AdapterConflict: 409,
}


def create_app(
    settings: Settings, keys: KeyRing, engine_factory: EngineFactory = Engine
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from server.grpc_api.server import start_grpc_server, stop_grpc_server

        app.state.hotswap = None
        app.state.engine = None
        app.state.schema_guard = None
        grpc_server = await start_grpc_server(settings, keys, lambda: app.state.hotswap)
        starting = asyncio.create_task(_start(app, settings, engine_factory))
        starting.add_done_callback(_stop_if_start_failed)
        try:
            yield
        finally:
            await stop_grpc_server(grpc_server, settings.shutdown_grace_s)
            starting.cancel()
            engine: Engine | None = app.state.engine
            if engine is not None:
                engine.shutdown()
            guard: CompileGuard | None = app.state.schema_guard
            if guard is not None:
                await asyncio.to_thread(guard.close)

    app = FastAPI(title="hotswap", version="0.1.0", lifespan=lifespan)
    app.middleware("http")(request_id_middleware)
    app.state.settings = settings
    app.state.keys = keys

    @app.exception_handler(HotswapError)
    async def _hotswap_error(_: Request, exc: HotswapError) -> JSONResponse:
        return JSONResponse(error_body(exc), status_code=exc.status, headers=retry_headers(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        message = validation_message(exc.errors())
        return JSONResponse(error_body(InvalidRequest(message)), status_code=422)

    @app.exception_handler(AdapterError)
    async def _adapter_error(_: Request, exc: AdapterError) -> JSONResponse:
        status = _ADAPTER_ERROR_STATUS.get(type(exc), 422)
        kind = type(exc).__name__
        return JSONResponse(
            {"error": {"message": str(exc), "type": kind, "code": status}}, status_code=status
        )

    @app.exception_handler(AuthError)
    async def _auth_error(_: Request, exc: AuthError) -> JSONResponse:
        return JSONResponse(
            {"error": {"message": exc.message, "type": "authentication", "code": exc.status}},
            status_code=exc.status,
            headers={"WWW-Authenticate": "Bearer"} if exc.status == 401 else None,
        )

    infer = [Depends(require(Role.INFER))]
    app.include_router(health.router)
    app.include_router(openai.router, dependencies=infer)
    app.include_router(generate.router, dependencies=infer)
    app.include_router(stats.router, dependencies=infer)
    app.include_router(adapters.router, dependencies=[Depends(require(Role.ADMIN))])
    return app


def _stop_if_start_failed(task: asyncio.Task[None]) -> None:
    """A server whose engine cannot start is of no use: log why and shut down."""
    if not task.cancelled() and task.exception() is not None:
        logger.error("Start-up failed; stopping", exc_info=task.exception())
        os.kill(os.getpid(), signal.SIGTERM)


def run(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM; in-flight requests get `shutdown_grace_s` to finish."""
    keys = KeyRing.load(settings.api_keys, settings.api_keys_file)
    refusal = check_bind_address(settings.host, keys)
    if refusal is not None:
        raise SystemExit(refusal)
    if not keys.enabled:
        logger.warning("No API keys configured: open access, listening on loopback only.")
    uvicorn.run(
        create_app(settings, keys),
        host=settings.host,
        port=settings.port,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
        log_config=None,  # the CLI configured logging (JSON lines by default)
    )
