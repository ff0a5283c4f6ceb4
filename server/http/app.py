"""The FastAPI application: start-up and shutdown of the engine, routers and the key each
needs, the edge and error middleware."""

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
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from prometheus_client import REGISTRY
from starlette.routing import BaseRoute

from adapters.archive import ArchiveLimits
from adapters.base_spec import spec_from_hf_config
from adapters.registry import AdapterRegistry
from server.adapter_service import AdapterService
from server.auth import KeyRing, Role, check_bind_address
from server.base_model import BaseModel, resolve_base_model
from server.catalog import ModelCatalog
from server.engine import Engine
from server.engine_supervisor import EngineSupervisor
from server.generation import GenerationService
from server.http.edge import BodyType, EdgeGuard, EdgeRule
from server.http.errors import CatchAll, install_error_handlers
from server.http.routes import adapters, generate, health, openai, stats
from server.http.state import documented_key
from server.metrics.labels import LabelTracker
from server.request_log import RequestIdMiddleware
from server.schema_policy import SchemaPolicy, upload_schema_check
from server.settings import Settings
from server.state import ServerState
from server.structured import CompileGuard, ValidationGuard

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
    fallback = settings.schema_fallback()
    guard = CompileGuard(
        base.path,
        timeout_s=settings.schema_compile_timeout_s,
        memory_limit_mb=settings.schema_compile_memory_mb,
        max_grammar_mb=settings.schema_max_grammar_mb,
        vocab_cache_dir=settings.schema_vocab_cache_dir,
        max_waiting=settings.schema_compile_max_waiting,
        fallback_engines=[fallback] if fallback else [],
    )
    app.state.schema_guard = guard  # closed by the lifespan, even if start-up fails later
    validator = ValidationGuard(
        timeout_s=settings.schema_validation_timeout_s,
        memory_limit_mb=settings.schema_validation_memory_mb,
        workers=settings.schema_validation_workers,
        max_waiting=settings.schema_validation_max_waiting,
    )
    app.state.schema_validator = validator  # closed by the lifespan, like the guard
    schemas = SchemaPolicy(
        guard,
        settings.schema_limits,
        settings.schema_max_retries,
        validator,
        budget_decoding=settings.structured_outputs_backend == "outlines",
        budget_max_grammar_mb=settings.schema_budget_max_grammar_mb,
        fallback=fallback,
    )
    registry = AdapterRegistry(
        settings.home,
        spec_from_hf_config(
            base.path, fingerprint=base.fingerprint, max_lora_rank=settings.max_lora_rank
        ),
        limits=ArchiveLimits(max_archive_bytes=settings.max_upload_bytes),
        schema_check=upload_schema_check(schemas, asyncio.get_running_loop()),
        database_url=settings.database_url.get_secret_value() if settings.database_url else None,
        store_dir=settings.adapter_store_dir,
    )
    engine = engine_factory(settings, base)
    app.state.engine = engine  # stopped by the lifespan, even while it starts
    await asyncio.gather(
        asyncio.to_thread(engine.start_blocking),
        asyncio.to_thread(guard.start),
        asyncio.to_thread(validator.start),
    )
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
        schemas,
        max_prompt_chars=settings.max_prompt_chars,
        max_n=settings.max_n,
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
        archive = await asyncio.to_thread(
            shutil.make_archive, str(Path(tmp) / name), "gztar", root_dir=folder
        )
        result = await service.upload(Path(archive), name=name)
    logger.info(
        "Adapter %s@%d from %s (%s)",
        name,
        result.adapter.version,
        folder,
        "new" if result.created else "already registered",
    )


# Multipart boundaries, part headers and the form's small fields around an uploaded archive.
MULTIPART_OVERHEAD_BYTES = 64 << 10


def _json_rule(role: Role | None, settings: Settings) -> EdgeRule:
    return EdgeRule(role, BodyType.JSON, settings.max_request_bytes)


def _include_routers(app: FastAPI, settings: Settings) -> list[tuple[BaseRoute, EdgeRule]]:
    """Add the routers, each with the key role its routes need (None: public), and return
    the edge's rule for every route, the API docs' included."""
    key_unless = {True: None, False: Role.INFER}  # any key, unless made public
    routers: list[tuple[APIRouter, Role | None]] = [
        (health.router, None),
        (health.metrics_router, key_unless[settings.public_metrics]),
        (openai.router, Role.INFER),
        (generate.router, Role.INFER),
        (stats.router, Role.INFER),
        (adapters.router, Role.ADMIN),
    ]
    upload = EdgeRule(
        Role.ADMIN, BodyType.MULTIPART, settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES
    )
    rules: list[tuple[BaseRoute, EdgeRule]] = []
    for router, role in routers:
        app.include_router(router, dependencies=[] if role is None else [documented_key(role)])
        for route in router.routes:
            is_upload = isinstance(route, APIRoute) and route.endpoint is adapters.upload_adapter
            rules.append((route, upload if is_upload else _json_rule(role, settings)))
    docs = {app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url}
    docs_rule = _json_rule(key_unless[settings.public_docs], settings)
    rules += [(route, docs_rule) for route in app.routes if getattr(route, "path", None) in docs]
    return rules


def create_app(
    settings: Settings, keys: KeyRing, engine_factory: EngineFactory = Engine
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from server.grpc_api.server import start_grpc_server, stop_grpc_server

        app.state.hotswap = None
        app.state.engine = None
        app.state.schema_guard = None
        app.state.schema_validator = None
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
            validator: ValidationGuard | None = app.state.schema_validator
            if validator is not None:
                await asyncio.to_thread(validator.close)

    app = FastAPI(title="hotswap", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    install_error_handlers(app)
    rules = _include_routers(app, settings)
    app.add_middleware(EdgeGuard, keys=keys, rules=rules, fallback=_json_rule(Role.INFER, settings))
    app.add_middleware(CatchAll)
    app.add_middleware(RequestIdMiddleware)  # outermost: every log line names the request
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
