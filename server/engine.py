"""The one place that talks to vLLM: starts the async engine, runs requests, stops it.

Everything outside this module speaks in hotswap's own small types (`Sampling`,
`LoraTarget`, `Chunk`), so the HTTP and gRPC layers never import vLLM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import jinja2

from adapters.cpu_compile_cache import export_cpu_compile_cache
from adapters.cpu_dtype import engine_dtype
from adapters.cpu_reserved_cores import export_reserved_cores
from server.base_model import BaseModel
from server.errors import EngineUnavailable, InvalidRequest
from server.metrics.instruments import ADAPTER_COLD_LOADS
from server.settings import Settings
from server.structured.engine_extension import FallbackEngine, structured_request

logger = logging.getLogger(__name__)

T = TypeVar("T")
_DEATH_CHECK_S = 0.5  # how often a waiting engine call checks that the core still runs
_DIED = "The engine stopped while serving this request; it restarts by itself, retry shortly."


@dataclass(frozen=True)
class LoraTarget:
    """An adapter as the engine sees it: a unique name, a never-reused integer id, a folder."""

    name: str
    lora_int_id: int
    path: Path


# Log-probabilities vLLM reports as -inf are sent as this (JSON has no infinity), as vLLM does.
MIN_LOGPROB = -9999.0
# vLLM seeds a torch generator (64-bit; its newer model runner keeps seeds in an int64 array)
# and reads -1 as "no seed": a seed is 0 to 2**63 - 1.
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class Sampling:
    """Decoding knobs of one request, in hotswap's terms."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: Sequence[str] = field(default_factory=tuple)
    json_schema: dict[str, Any] | None = None
    n: int = 1
    """Choices generated from the one prompt (vLLM fans them out; each seed is `seed + index`)."""
    logprobs: int | None = None
    """None: no log-probabilities; k >= 0: each token's, with the k most likely alternatives."""
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: Mapping[int, float] = field(default_factory=dict)
    """Added to the logits of these token ids before sampling."""
    budget_aware: bool = False
    """Under `json_schema`, close the document validly within `max_tokens` (budget-aware
    decoding, `server.structured.engine_extension`): set when `max_tokens` is below the
    longest document the schema allows."""
    grammar_engine: FallbackEngine | None = None
    """Under `json_schema`, the fallback grammar engine that decodes it (None: the configured
    backend, outlines by default)."""
    scored_token_ids: tuple[int, ...] = ()
    """Token ids whose log-probabilities each new token's position reports (`Chunk.scores`):
    the label trie's branching points are read this way (`server.label_scores`)."""


@dataclass(frozen=True)
class TopLogprob:
    """One of the most likely tokens at a position."""

    token_id: int
    token: str
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token, its log-probability and the most likely tokens at its position.
    The figures are vLLM's raw log-probabilities: the model's distribution before
    temperature, penalties, logit bias and any grammar mask."""

    token_id: int
    token: str
    logprob: float
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True)
class Chunk:
    """One step of one choice of a running request: the new text and the counts so far
    (`completion_tokens` counts this choice's tokens)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    index: int = 0
    logprobs: tuple[TokenLogprob, ...] = ()
    """The new tokens' log-probabilities when the request asked for them."""
    scores: tuple[Mapping[int, float], ...] = ()
    """Per new token, the log-probabilities of `Sampling.scored_token_ids` at its position."""


def _stop_starting_engine_cores() -> None:
    """A start's thread waits for its engine core to come up (minutes on a loaded CPU
    machine) and cannot be cancelled: kill that process (vLLM names it `EngineCore`) and its
    workers, so the start fails at once and the server exits without leaving them behind.
    (A core still starting ignores SIGTERM until it is up.)"""
    for process in multiprocessing.active_children():
        if process.name.startswith("EngineCore"):
            from vllm.utils.system_utils import kill_process_tree

            logger.info("Killing the engine core being started (pid %s)", process.pid)
            kill_process_tree(process.pid)


def resolve_dtype(settings: Settings, on_cuda: bool) -> str:
    """`auto` means the model's own dtype on GPU, and on CPU bfloat16 where the CPU multiplies
    it natively, else float32 (`adapters.cpu_dtype`)."""
    return engine_dtype(settings.dtype, on_cpu=not on_cuda)


class Engine:
    """Owns the vLLM `AsyncLLM` for the process lifetime."""

    def __init__(self, settings: Settings, base: BaseModel) -> None:
        self._settings = settings
        self.base = base
        self._llm: Any = None
        self._tokenizer: Any = None
        # Mirror of the engine's host-memory LRU of adapters (max_cpu_loras entries), to tell
        # which requests pay a cold load from disk.
        self._resident: OrderedDict[int, None] = OrderedDict()
        # False while the engine is being restarted and its adapters reloaded.
        self._serving = False
        self._closed = False
        self._building = False  # a new engine core is starting
        self._swap = threading.Lock()  # guards `_llm` and `_closed` against a start thread

    @property
    def ready(self) -> bool:
        """Requests may come in: the engine core runs and is not being recovered."""
        return self._serving and self._alive()

    @property
    def errored(self) -> bool:
        """The engine core died (vLLM has already failed the requests it was running)."""
        return self._llm is not None and bool(self._llm.errored)

    def _alive(self) -> bool:
        return self._llm is not None and not self._llm.errored

    def start_blocking(self) -> None:
        """Build the engine (spawns the engine core process); returns once it can serve.
        Blocks for the engine's start-up (seconds): call it from a worker thread."""
        self._launch()
        self._serving = True
        logger.info("Engine ready: %s (%s)", self.base.name, self.base.fingerprint)

    def restart_blocking(self) -> None:
        """Stop the (dead) engine and build a new one that holds no adapter yet; `ready`
        stays False until `resume`. Blocks like `start_blocking`."""
        with self._swap:
            self._serving = False
            old, self._llm = self._llm, None
            self._resident.clear()
        if old is not None:
            old.shutdown()
        self._launch()
        logger.info("Engine restarted: %s", self.base.name)

    def _launch(self) -> None:
        """Build a new engine and make it the current one. Raises EngineUnavailable (and
        stops the new engine) if the server shuts down meanwhile."""
        with self._swap:
            if self._closed:
                raise EngineUnavailable("The server is shutting down.")
            self._building = True
        try:
            llm = self._build()
        finally:
            self._building = False
        with self._swap:
            if not self._closed:
                self._llm, self._tokenizer = llm, llm.get_tokenizer()
                return
        llm.shutdown()
        raise EngineUnavailable("The server is shutting down.")

    def resume(self) -> None:
        """Let requests in again after a restart (adapters reloaded)."""
        self._serving = True

    def _build(self) -> Any:
        self._export_engine_environment()
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        s = self._settings
        args = AsyncEngineArgs(
            model=str(self.base.path),
            served_model_name=[self.base.name],
            dtype=resolve_dtype(s, on_cuda=current_platform.is_cuda()),
            max_model_len=s.max_model_len,
            max_num_seqs=s.max_num_seqs,
            enable_lora=True,
            max_loras=s.max_loras,
            max_lora_rank=s.max_lora_rank,
            max_cpu_loras=s.max_cpu_loras,
            structured_outputs_config={"backend": s.structured_outputs_backend},
            seed=s.seed,
            disable_log_stats=False,
        )
        return AsyncLLM.from_engine_args(args)

    def _export_engine_environment(self) -> None:
        """Settings the engine core process reads from its environment (it is spawned)."""
        from vllm.platforms import current_platform

        export_cpu_compile_cache(on_cpu=current_platform.is_cpu())
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self._settings.kv_cache_space_gib))
        export_reserved_cores(self._settings.cpu_reserved_cores)
        os.environ["HOTSWAP_FAST_CPU_LORA"] = "1" if self._settings.fast_cpu_lora else "0"
        os.environ["HOTSWAP_GRAMMAR_CACHE_MB"] = str(self._settings.grammar_cache_mb)
        # The compile guard already proved every schema compiles within its (lower) limit.
        os.environ["VLLM_REGEX_COMPILATION_TIMEOUT_S"] = str(
            self._settings.engine_schema_compile_timeout_s
        )

    def shutdown(self) -> None:
        """Stop the engine for good, also one still starting (its core is stopped)."""
        with self._swap:
            self._closed, self._serving = True, False
            llm, self._llm = self._llm, None
            building = self._building
        if llm is not None:
            llm.shutdown()
            logger.info("Engine stopped")
        if building:
            _stop_starting_engine_cores()

    def _require(self) -> Any:
        llm = self._llm
        if llm is None or llm.errored:
            raise EngineUnavailable("The engine is not ready; retry shortly.")
        return llm

    async def _utility(self, call: Awaitable[T]) -> T:
        """Await a call answered by the engine core. vLLM leaves such a call waiting forever
        when the core dies, so the core's liveness is checked while it runs."""
        task = asyncio.ensure_future(call)
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=_DEATH_CHECK_S)
                if not task.done() and not self._alive():
                    raise EngineUnavailable(_DIED)
            return task.result()
        except Exception as exc:
            if isinstance(exc, EngineUnavailable) or self._alive():
                raise
            # vLLM's EngineDeadError, or whatever the call met while the core went down
            raise EngineUnavailable(_DIED) from exc
        finally:
            task.cancel()

    def render_chat(
        self,
        messages: Sequence[Mapping[str, object]],
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[int]:
        """Token ids of a chat conversation framed by the model's chat template, `tools`
        handed to a template with tool support. A template error is the messages' fault (the
        template refuses their roles or order): 422 with a fixed message, its text logged
        only. Blocks (CPU): call it from a worker thread."""
        self._require()
        extra = {"tools": list(tools)} if tools else {}
        try:
            text = self._tokenizer.apply_chat_template(
                list(messages), add_generation_prompt=True, tokenize=False, **extra
            )
        except (jinja2.TemplateError, RecursionError) as exc:  # also tool arguments nested deep
            logger.info("The chat template refused a request's messages: %s", exc)
            raise InvalidRequest(
                "The messages cannot be rendered by the model's chat template; check their "
                "roles and order (some templates need user and assistant turns to alternate)."
            ) from None
        return self.tokenize(text)

    def chat_template_takes_tools(self) -> bool:
        """Whether the model's chat template renders `tools` (its source mentions them)."""
        self._require()
        return "tools" in str(getattr(self._tokenizer, "chat_template", None) or "")

    @property
    def vocab_size(self) -> int:
        """Token ids run from 0 to `vocab_size - 1` (the tokenizer's, added tokens included)."""
        self._require()
        return len(self._tokenizer)

    def tokenize(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`. `add_special_tokens` for a raw completion prompt, as vLLM's own
        completions API encodes one (a `<bos>` where the model wants it: Gemma); chat-rendered
        text carries its special tokens already. Blocks (CPU): call it from a worker thread
        for a request."""
        self._require()
        return list(self._tokenizer.encode(text, add_special_tokens=add_special_tokens))

    async def load_lora(self, lora: LoraTarget) -> None:
        """Load an adapter into the engine's adapter cache: vLLM reads its files and checks
        every tensor against the model, so a request routed to it reads nothing from disk.
        Its first request moves it into an engine slot, as for any adapter in the cache;
        running a token through it here instead cost the swap more than it saved that
        request (docs/benchmarks.md, "Hot swap")."""
        from vllm.lora.request import LoRARequest

        llm = self._require()
        await self._utility(llm.add_lora(LoRARequest(lora.name, lora.lora_int_id, str(lora.path))))
        self._touch(lora.lora_int_id)

    def _touch(self, lora_int_id: int) -> bool:
        """Mark an adapter as used; True when it was not resident (a cold load)."""
        cold = lora_int_id not in self._resident
        self._resident[lora_int_id] = None
        self._resident.move_to_end(lora_int_id)
        while len(self._resident) > self._settings.max_cpu_loras:
            self._resident.popitem(last=False)
        return cold

    async def loaded_loras(self) -> set[int]:
        """Engine ids of the adapters the engine holds now."""
        return set(await self._utility(self._require().list_loras()))

    async def generate(
        self,
        prompt_token_ids: list[int],
        sampling: Sampling,
        request_id: str,
        lora: LoraTarget | None = None,
    ) -> AsyncIterator[Chunk]:
        """Run one request; yields new text as it is produced. Closing the iterator early
        (client gone, deadline) aborts the request in the engine."""
        from vllm.exceptions import VLLMClientError
        from vllm.inputs import TokensPrompt
        from vllm.lora.request import LoRARequest
        from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams
        from vllm.v1.engine.exceptions import EngineDeadError

        llm = self._require()
        structured, extra_args = structured_request(
            sampling.json_schema,
            self._settings.structured_outputs_backend,
            budget_aware=sampling.budget_aware,
            engine=sampling.grammar_engine,
        )
        try:
            params = SamplingParams(
                max_tokens=sampling.max_tokens,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                seed=sampling.seed,
                stop=list(sampling.stop) or None,
                n=sampling.n,
                logprobs=sampling.logprobs,
                presence_penalty=sampling.presence_penalty,
                frequency_penalty=sampling.frequency_penalty,
                logit_bias=dict(sampling.logit_bias) or None,
                logprob_token_ids=list(sampling.scored_token_ids) or None,
                output_kind=RequestOutputKind.DELTA,
                structured_outputs=(
                    StructuredOutputsParams(**structured) if structured is not None else None
                ),
                extra_args=extra_args,
            )
        except (ValueError, VLLMClientError) as exc:  # vLLM's checks of the knobs
            raise InvalidRequest(f"The engine refused the request: {exc}") from exc
        lora_request = None
        if lora is not None:
            lora_request = LoRARequest(lora.name, lora.lora_int_id, str(lora.path))
            if self._touch(lora.lora_int_id):
                ADAPTER_COLD_LOADS.labels(lora.name.partition("@")[0]).inc()
        completion_tokens = [0] * sampling.n
        try:
            (engine_input,) = await llm.renderer.render_cmpl_async(
                [TokensPrompt(prompt_token_ids=prompt_token_ids)]
            )
            outputs = llm.generate(engine_input, params, request_id, lora_request=lora_request)
            async with contextlib.aclosing(outputs):
                async for out in outputs:
                    for step in out.outputs:  # the choices that moved (DELTA: new tokens only)
                        completion_tokens[step.index] += len(step.token_ids)
                        yield Chunk(
                            text=step.text,
                            prompt_tokens=len(prompt_token_ids),
                            completion_tokens=completion_tokens[step.index],
                            finish_reason=step.finish_reason,
                            index=step.index,
                            logprobs=_logprobs(step, sampling.logprobs),
                            scores=_scores(step, sampling.scored_token_ids),
                        )
        except EngineDeadError as exc:
            raise EngineUnavailable(_DIED) from exc
        except (ValueError, VLLMClientError) as exc:  # vLLM's request validation
            raise InvalidRequest(f"The engine refused the request: {exc}") from exc
        except Exception as exc:  # whatever a call met while the core went down
            if not llm.errored:
                raise
            raise EngineUnavailable(_DIED) from exc


def _logprobs(step: Any, top: int | None) -> tuple[TokenLogprob, ...]:
    """A vLLM `CompletionOutput`'s per-token log-probabilities in hotswap's types: the
    sampled token's, and the `top` most likely at each position (by vLLM's rank)."""
    if top is None or not step.logprobs:
        return ()
    tokens = []
    for token_id, position in zip(step.token_ids, step.logprobs, strict=False):
        ranked = sorted(
            (
                (entry.rank, TopLogprob(tid, entry.decoded_token or "", _finite(entry.logprob)))
                for tid, entry in position.items()
                if entry.rank is not None and entry.rank <= top
            ),
            key=lambda pair: pair[0],
        )
        chosen = position[token_id]
        tokens.append(
            TokenLogprob(
                token_id,
                chosen.decoded_token or "",
                _finite(chosen.logprob),
                tuple(entry for _, entry in ranked[:top]),
            )
        )
    return tuple(tokens)


def _scores(step: Any, token_ids: Sequence[int]) -> tuple[Mapping[int, float], ...]:
    """The log-probabilities of `token_ids` at each new token's position."""
    if not token_ids or not step.logprobs:
        return ()
    return tuple(
        {tid: position[tid].logprob for tid in token_ids if tid in position}
        for position in step.logprobs
    )


def _finite(logprob: float) -> float:
    return max(logprob, MIN_LOGPROB)
