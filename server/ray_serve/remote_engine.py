"""The ingress's engine: the `Engine` interface served by the Ray Serve engine replicas.

The ingress runs the whole hotswap app (catalog, registry, schema guard, generation service,
metrics of requests and drift); only the calls into vLLM go to a replica, routed by Ray Serve
model multiplexing on the adapter's `name@version`. Tokenization stays local (same tokenizer
files as the replicas), so a request is framed and budgeted before it leaves the ingress.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from contextvars import ContextVar
from typing import Any, cast

from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import RequestCancelledError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from server.base_model import BaseModel
from server.engine import Chunk, Engine, LoraTarget, Sampling
from server.errors import EngineUnavailable, HotswapError
from server.ray_serve.engine_replica import ServedBy
from server.settings import Settings

READY_TIMEOUT_S = 900.0  # engine replicas start in 30 s idle, minutes on a busy machine

# Replicas that answered the current HTTP request (set per request by the ingress middleware).
served_by: ContextVar[list[str] | None] = ContextVar("served_by", default=None)


class RemoteEngine(Engine):
    """An `Engine` whose vLLM engines live in the replicas behind `replicas`."""

    def __init__(self, settings: Settings, base: BaseModel, replicas: DeploymentHandle) -> None:
        super().__init__(settings, base)
        self._replicas = replicas
        self._connected = False

    @property
    def ready(self) -> bool:
        return self._connected and self._tokenizer is not None

    @property
    def errored(self) -> bool:
        """Never: a replica whose engine dies is replaced by Ray Serve (health check)."""
        return False

    def start_blocking(self) -> None:
        """Load the tokenizer and wait until an engine replica answers."""
        from vllm.tokenizers import get_tokenizer

        self._tokenizer = get_tokenizer(str(self.base.path))
        self._replicas.ready.remote().result(timeout_s=READY_TIMEOUT_S)
        self._connected = True

    def shutdown(self) -> None:
        self._connected = False

    def _require(self) -> Any:
        if not self.ready:
            raise EngineUnavailable("No engine replica is ready; retry shortly.")
        return self._tokenizer

    async def load_lora(self, lora: LoraTarget) -> None:
        """Load an adapter into one replica (the one Ray routes `name@version` to); the
        others load it on their first request for it."""
        self._require()
        with _engine_errors():
            await self._replicas.options(multiplexed_model_id=lora.name).load.remote(lora)

    async def loaded_loras(self) -> set[int]:
        """Engine ids of the adapters held by one replica (whichever Ray picks)."""
        self._require()
        with _engine_errors():
            held: set[int] = await self._replicas.loaded_loras.remote()
        return held

    async def generate(
        self,
        prompt_token_ids: list[int],
        sampling: Sampling,
        request_id: str,
        lora: LoraTarget | None = None,
    ) -> AsyncIterator[Chunk]:
        """Stream a request from a replica: for an adapter, preferably one already holding
        `name@version`; for the base model, any. Closing early cancels it on the replica."""
        self._require()
        handle = self._replicas.options(
            stream=True, multiplexed_model_id=lora.name if lora is not None else ""
        )
        stream = cast(
            DeploymentResponseGenerator[ServedBy | Chunk],
            handle.generate.remote(prompt_token_ids, sampling, request_id, lora),
        )
        finished = False
        try:
            with _engine_errors():
                async for item in stream:
                    if isinstance(item, ServedBy):
                        answered = served_by.get()
                        if answered is not None:
                            answered.append(item.replica)
                        continue
                    yield item
            finished = True
        finally:
            if not finished:
                stream.cancel()


@contextlib.contextmanager
def _engine_errors() -> Iterator[None]:
    """Errors raised on a replica come back as hotswap's own; a replica that died while
    serving the request reads as the engine being unavailable (503, retry)."""
    try:
        yield
    except RayTaskError as exc:
        if isinstance(exc.cause, HotswapError):
            raise exc.cause from None
        raise
    except (RayActorError, RequestCancelledError) as exc:
        raise EngineUnavailable(
            "The engine replica serving this request stopped; retry shortly."
        ) from exc
