"""The domain call behind every inference route: resolve the model, frame the prompt,
admit its JSON Schema, check the token budget, run it on the engine, validate the answer.
HTTP and gRPC both call this module."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Iterator, Mapping, Sequence
from contextlib import aclosing, contextmanager
from dataclasses import dataclass, field
from typing import Any

from adapters.label_sets import label_set_field
from adapters.label_trie import LabelDistribution, classification_field, label_answer
from server.catalog import ModelCatalog, RolloutRoute, ServedModel
from server.engine import MAX_SEED, Chunk, Engine, Sampling, TokenLogprob
from server.errors import HotswapError, InvalidRequest, PromptTooLong, QueueFull
from server.label_scores import (
    DEFAULT_TOP_LABELS,
    LabelPlan,
    LabelScorer,
    LabelSetPlan,
    LabelSetVerdict,
    LabelVerdict,
    verdict,
)
from server.metrics.instruments import SCHEMA_ENGINES, SCHEMA_OUTCOMES, UNKNOWN_ADAPTER
from server.metrics.labels import LabelTracker, labels_of
from server.metrics.requests import RequestRecorder, record_refusal
from server.rollouts.stats import Outcome
from server.rollouts.tracker import Role
from server.schema_policy import (
    RETRY_MIN_TEMPERATURE,
    AdmittedSchema,
    SchemaBudgetTooSmall,
    SchemaPolicy,
    SchemaViolation,
)
from server.structured import ValidationOutcome
from server.tool_calls.prompt import render_chat
from server.tool_calls.spec import ToolPlan

DEFAULT_MAX_N = 8
JSON_OBJECT_SCHEMA: dict[str, Any] = {"type": "object"}
"""`response_format: json_object`: the answer is validated against this schema and decoded
with its grammar as outlines builds it (any JSON object, containers nested at most 3 deep;
compiled once per engine, about 5 s). Its sizes are unbounded, so it runs with the request's
`max_tokens` (or the default) and budget-aware decoding closes the object within it."""
JSON_OBJECT_MIN_TOKENS = 3
"""`{`, `}` and end-of-sequence: the fewest tokens of a JSON object under any byte-level
vocabulary."""


@dataclass(frozen=True)
class GenerationRequest:
    """One inference request in hotswap's terms. Exactly one input is given: `messages` (chat,
    framed by the chat template), `prompt` (raw text, sent as is), `prompt_token_ids` (token
    ids, checked against the vocabulary) or `task_input` (text framed by the adapter's task:
    its system message and template, and its output schema unless `json_schema` is given).
    `n` choices are generated; `logprobs` k asks for each token's log-probability and the k
    most likely alternatives. `json_object` asks for any JSON object."""

    model: str | None
    messages: Sequence[Mapping[str, object]] | None = None
    prompt: str | None = None
    prompt_token_ids: Sequence[int] | None = None
    task_input: str | None = None
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: Sequence[str] = field(default_factory=tuple)
    json_schema: dict[str, Any] | None = None
    tools: ToolPlan | None = None
    """Tools offered to the model in the prompt of `messages` (`server.tool_calls`)."""
    json_object: bool = False
    n: int = 1
    logprobs: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: Mapping[int, float] = field(default_factory=dict)
    top_labels: int = DEFAULT_TOP_LABELS
    """Of a classification task (`server.label_scores`): the most probable labels returned."""
    abstain_below: float | None = None
    """Of a classification task: abstain below this confidence (None: the manifest's)."""
    protocol: str = "http"
    route: str = "generate"


GRAMMAR_ENGINE_HEADER = "x-hotswap-grammar-engine"
"""Header (HTTP) and metadata key (gRPC) naming the grammar engine of a constrained answer."""
ADAPTER_VERSION_HEADER = "x-hotswap-adapter-version"
"""Header naming the adapter version that answered (`name@version`), under a rollout too."""

logger = logging.getLogger(__name__)


def version_headers(model: ServedModel) -> dict[str, str]:
    """The header naming the adapter version that answers; none for the base model."""
    if model.version is None:
        return {}
    return {ADAPTER_VERSION_HEADER: f"{model.name}@{model.version}"}


@dataclass(frozen=True)
class PreparedRequest:
    """A request that passed every check and is ready for the engine. Under a schema,
    `sampling.json_schema` is the bounded schema and `schema` holds the user's original."""

    model: ServedModel
    prompt_token_ids: list[int]
    sampling: Sampling
    protocol: str
    route: str
    schema: AdmittedSchema | None = None
    labels: LabelPlan | None = None
    """Set for a classification task's text input: its labels are scored."""
    label_sets: LabelSetPlan | None = None
    """Set for a multi-label task's text input: its answer is generated, and each label's
    probability of being in the answer's set is read beside it."""
    shadow: bool = False
    """A rollout's shadow copy: never returned, outside the admission limit and the
    adapter's schema and label metrics (`server.rollouts`)."""

    @property
    def grammar_engine(self) -> str | None:
        """The grammar engine that decodes it (outlines, guidance, xgrammar); None without a
        schema."""
        return None if self.schema is None else self.schema.grammar_engine


@dataclass
class GenerationResult:
    """What one choice of a request produced; filled in as its stream runs."""

    model: ServedModel
    index: int = 0
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    output: Any = None
    valid: bool | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    label: LabelVerdict | None = None
    """Of a classification task: the answer's label probability, the top labels, abstention."""
    label_set: LabelSetVerdict | None = None
    """Of a multi-label task: the labels most probably in the answer's set and the empty
    set's probability."""


class GenerationService:
    """Turns `GenerationRequest`s into engine runs."""

    # A prompt longer than this many characters per token of the context is refused before it
    # is tokenized. Tokens of English text average about 4 characters; 16 leaves room for
    # long ones (runs of spaces, code indentation) and still bounds tokenizing to milliseconds.
    PROMPT_CHARS_PER_TOKEN = 16
    # Model references remembered for the adapter label of their refusals (least recent out).
    REMEMBERED_REFS = 1024

    def __init__(
        self,
        engine: Engine,
        catalog: ModelCatalog,
        max_model_len: int,
        default_max_tokens: int,
        max_in_flight: int,
        labels: LabelTracker,
        schemas: SchemaPolicy | None = None,
        max_prompt_chars: int | None = None,
        max_n: int = DEFAULT_MAX_N,
    ) -> None:
        """`schemas` admits and judges JSON Schemas; the default bounds and validates them but
        runs no compile guard (the server always passes one built on its guard).
        `max_prompt_chars` unset: `PROMPT_CHARS_PER_TOKEN` per token of `max_model_len`.
        `max_n`: choices one call may ask for, all its prompts together."""
        self._engine = engine
        self._schemas = schemas if schemas is not None else SchemaPolicy(None)
        self._catalog = catalog
        self._max_model_len = max_model_len
        self._max_prompt_chars = max_prompt_chars or self.PROMPT_CHARS_PER_TOKEN * max_model_len
        self._default_max_tokens = default_max_tokens
        self._max_in_flight = max_in_flight
        self._max_n = max_n
        self._in_flight = 0
        self._shadows: set[asyncio.Task[None]] = set()
        self._labels = labels
        self._scorer = LabelScorer(engine)
        # model references that resolved -> the adapter label their metrics carry
        self._metric_names: OrderedDict[str | None, str] = OrderedDict({None: catalog.base.name})

    async def prepare(self, request: GenerationRequest) -> PreparedRequest:
        """Resolve, frame, admit the schema of and budget a request; raises a `HotswapError`
        naming the problem (and counts the refusal). A schema is bounded and compiled in the
        sandbox here, before the engine sees it; with one, `max_tokens` unset is what its
        longest document needs, and a smaller one is decoded budget-aware (the document closed
        within it), so a document is never cut."""
        (prepared,) = await self.prepare_all([request])
        return prepared

    async def prepare_all(self, requests: Sequence[GenerationRequest]) -> list[PreparedRequest]:
        """`prepare` for the prompts of one call (completions' list of prompts): their choices
        together are at most `max_n` and count `n` each against the in-flight limit."""
        first = requests[0]
        try:
            choices = sum(request.n for request in requests)
            if choices > self._max_n or min(request.n for request in requests) < 1:
                shown = f"{first.n} for {len(requests)} prompts" if len(requests) > 1 else first.n
                raise InvalidRequest(
                    f"`n` is {shown}: {choices} choices, the limit is {self._max_n} "
                    "(n times the number of prompts)."
                )
            if any(r.n > 1 and r.temperature == 0 for r in requests):
                raise InvalidRequest(
                    "`n` > 1 needs a `temperature` above 0: greedy choices would all be the same."
                )
            if self._in_flight + choices > self._max_in_flight:
                raise QueueFull(
                    f"{self._in_flight} requests are in flight, the limit is "
                    f"{self._max_in_flight}; retry later."
                )
            self._in_flight += choices  # requests being prepared (in worker threads) count too
            try:
                return [await self._prepare(request) for request in requests]
            finally:
                self._in_flight -= choices
        except HotswapError as exc:
            adapter = self._metric_names.get(first.model, UNKNOWN_ADAPTER)
            record_refusal(adapter, first.protocol, first.route, exc.code)
            raise

    async def _prepare(self, request: GenerationRequest) -> PreparedRequest:
        self._check_length(request)
        # The registry is a database and tokenizing takes CPU time: both run off the loop.
        model = await asyncio.to_thread(self._catalog.resolve, request.model)
        self._remember(request.model, model.name)
        schema = request.json_schema
        messages = request.messages
        if request.task_input is not None:
            task = model.task
            messages = (
                task.render_messages(request.task_input)
                if task is not None
                else [{"role": "user", "content": request.task_input}]
            )
            if schema is None and task is not None:
                schema = task.output_schema
        self._check_token_ids(request)
        if messages is not None:
            prompt_ids = await asyncio.to_thread(render_chat, self._engine, messages, request.tools)
        elif request.prompt is not None:
            prompt_ids = await asyncio.to_thread(
                self._engine.tokenize, request.prompt, add_special_tokens=True
            )
        elif request.prompt_token_ids is not None:
            prompt_ids = list(request.prompt_token_ids)
        else:
            raise InvalidRequest("The request has no input.")
        if not prompt_ids:
            raise InvalidRequest("The prompt is empty.")
        if request.json_object:
            if schema is not None:
                raise InvalidRequest("Ask for a JSON Schema or for `json_object`, not both.")
            schema = JSON_OBJECT_SCHEMA
        admitted: AdmittedSchema | None = None
        if schema is not None:
            try:
                admitted = await self._schemas.admit(schema)
            except InvalidRequest:
                SCHEMA_OUTCOMES.labels(model.name, "refused").inc()
                raise
        max_tokens, budget_aware = await self._budget(
            len(prompt_ids),
            request.max_tokens,
            None if request.json_object else admitted,
            model.name,
        )
        if request.json_object and self._schemas.budget_decoding:
            if max_tokens < JSON_OBJECT_MIN_TOKENS:
                raise SchemaBudgetTooSmall(
                    f"max_tokens={max_tokens} is below the {JSON_OBJECT_MIN_TOKENS} tokens the "
                    "shortest JSON object needs (end-of-sequence included)."
                )
            budget_aware = True
        sampling = Sampling(
            max_tokens=max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            seed=request.seed,
            stop=tuple(request.stop),
            json_schema=(
                JSON_OBJECT_SCHEMA
                if request.json_object
                else admitted.bounded
                if admitted is not None
                else None
            ),
            budget_aware=budget_aware,
            grammar_engine=admitted.fallback if admitted is not None else None,
            n=request.n,
            logprobs=request.logprobs,
            presence_penalty=request.presence_penalty,
            frequency_penalty=request.frequency_penalty,
            logit_bias=dict(request.logit_bias),
        )
        if admitted is not None:
            SCHEMA_ENGINES.labels(model.name, admitted.grammar_engine).inc()
        scored = request.task_input is not None and request.json_schema is None
        labels = await self._label_plan(request, model) if scored else None
        return PreparedRequest(
            model=model,
            prompt_token_ids=prompt_ids,
            sampling=sampling,
            protocol=request.protocol,
            route=request.route,
            schema=admitted,
            labels=labels,
            label_sets=await self._label_set_plan(request, model)
            if scored and labels is None
            else None,
        )

    async def _label_plan(self, request: GenerationRequest, model: ServedModel) -> LabelPlan | None:
        """How the labels of a task call are scored; None unless the adapter's task is a
        single-label classification (its schema one `enum` field)."""
        task = model.task
        if task is None or task.labels is None:
            return None
        field_name = classification_field(task.output_schema, task.labels)
        if field_name is None:
            return None
        trie = await self._scorer.trie(model, field_name, task.labels)
        if trie is None:
            return None
        calibration = task.calibration
        longest = max(len(sequence) for sequence in trie.sequences) + 1  # end of sequence
        return LabelPlan(
            trie=trie,
            field=field_name,
            temperature=task.label_temperature,
            abstain_below=request.abstain_below
            if request.abstain_below is not None
            else calibration.abstain_below
            if calibration
            else None,
            top_k=request.top_labels,
            answer_directly=request.temperature == 0
            and request.n == 1
            and request.logprobs is None
            and (request.max_tokens is None or request.max_tokens >= longest),
        )

    async def _label_set_plan(
        self, request: GenerationRequest, model: ServedModel
    ) -> LabelSetPlan | None:
        """How the labels of a task call are read beside its answer; None unless the adapter's
        task is multi-label (its schema one array of its labels, `label_set_field`) and the
        tokenizer writes its answers as their pieces."""
        task = model.task
        if task is None or task.labels is None:
            return None
        set_field = label_set_field(task.output_schema, task.labels)
        if set_field is None:
            return None
        grammar = await self._scorer.grammar(model, set_field, task.labels)
        if grammar is None:
            return None
        return LabelSetPlan(
            grammar=grammar,
            temperature=task.label_temperature,
            top_k=request.top_labels,
        )

    def _check_length(self, request: GenerationRequest) -> None:
        """Refuse a prompt over `max_prompt_chars` characters, before any work on it."""
        if request.messages is not None:
            field, chars = (
                "messages",
                sum(
                    len(str(m.get("content", ""))) + len(str(m.get("tool_calls") or ""))
                    for m in request.messages
                ),
            )
            if request.tools is not None:
                field, chars = "messages` with `tools", chars + request.tools.prompt_chars()
        elif request.prompt is not None:
            field, chars = "prompt", len(request.prompt)
        elif request.task_input is not None:
            field, chars = "input", len(request.task_input)
        elif request.prompt_token_ids is not None:
            tokens = len(request.prompt_token_ids)
            if tokens > self._max_model_len:
                raise PromptTooLong(
                    f"`prompt` is {tokens} token ids, over the context of "
                    f"{self._max_model_len} tokens."
                )
            return
        else:
            return
        if chars > self._max_prompt_chars:
            raise PromptTooLong(
                f"`{field}` is {chars} characters long, over the limit of "
                f"{self._max_prompt_chars} characters."
            )

    def _check_token_ids(self, request: GenerationRequest) -> None:
        """Refuse prompt token ids and `logit_bias` keys outside the model's vocabulary."""
        if request.prompt_token_ids is None and not request.logit_bias:
            return
        vocab = self._engine.vocab_size
        for name, ids in (
            ("prompt", request.prompt_token_ids or ()),
            ("logit_bias", request.logit_bias),
        ):
            bad = next((i for i in ids if not 0 <= i < vocab), None)
            if bad is not None:
                raise InvalidRequest(
                    f"`{name}` holds token id {bad}, outside the vocabulary (0 to {vocab - 1})."
                )

    def _remember(self, ref: str | None, name: str) -> None:
        """Remember that `ref` names the adapter `name`, forgetting the least recent ref past
        `REMEMBERED_REFS` (a caller can spell one adapter in many ways)."""
        self._metric_names[ref] = name
        self._metric_names.move_to_end(ref)
        if len(self._metric_names) > self.REMEMBERED_REFS:
            self._metric_names.popitem(last=False)

    async def _budget(
        self,
        prompt_tokens: int,
        max_tokens: int | None,
        admitted: AdmittedSchema | None = None,
        adapter: str = "",
    ) -> tuple[int, bool]:
        """The max_tokens to run with, and whether the engine must close the schema's document
        within it (budget-aware decoding)."""
        limit = self._max_model_len
        if max_tokens is not None and max_tokens > limit:
            raise InvalidRequest(
                f"max_tokens={max_tokens} exceeds the context length of {limit} tokens."
            )
        room = limit - prompt_tokens
        if room <= 0:
            raise PromptTooLong(
                f"The prompt is {prompt_tokens} tokens, {prompt_tokens - limit + 1} more than "
                f"the context of {limit} tokens leaves room for (at least 1 token to generate)."
            )
        plan = None
        if admitted is not None:
            try:
                plan = await self._schemas.token_plan(admitted, max_tokens, room, limit)
            except HotswapError:
                SCHEMA_OUTCOMES.labels(adapter, "refused").inc()
                raise
        if max_tokens is None:
            if plan is not None:
                return plan.max_tokens, plan.budget_aware
            return min(self._default_max_tokens, room), False
        if max_tokens > room:
            raise PromptTooLong(
                f"The prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) is "
                f"{prompt_tokens + max_tokens - limit} tokens over the context of {limit}."
            )
        return max_tokens, plan is not None and plan.budget_aware

    async def stream(
        self,
        prepared: PreparedRequest,
        request_id: str,
        results: list[GenerationResult] | None = None,
    ) -> AsyncGenerator[Chunk, None]:
        """The engine's chunks as they come, each choice's tagged with its `index`; closing the
        iterator aborts the request. When the stream ends, `results` (if given, filled in here)
        holds each choice's whole text, parsed and validated; under a schema, a choice that
        fails it raises `SchemaViolation` after the last chunk (text already sent cannot be
        retried: `complete` retries)."""
        if prepared.labels is not None:  # scored, not streamed: the answer comes whole
            results = results if results is not None else []
            results[:] = await self.complete(prepared, request_id)
            for result in results:
                yield Chunk(
                    text=result.text,
                    prompt_tokens=result.prompt_tokens,
                    completion_tokens=result.completion_tokens,
                    finish_reason=result.finish_reason,
                    index=result.index,
                    logprobs=tuple(result.logprobs),
                )
            return
        results = _fresh(prepared, results)
        started = time.perf_counter()
        try:
            async with aclosing(self._attempt(prepared, request_id, results)) as chunks:
                async for chunk in chunks:
                    yield chunk
            for result in results:
                outcome = await self._judge(prepared, result, retrying=False)
                if outcome is not None and not outcome.valid and prepared.schema is not None:
                    raise self._schemas.violation(prepared.schema, outcome, attempts=1)
            if prepared.label_sets is not None:  # read once the answer is sent
                label_set = await self._scorer.label_sets(
                    prepared.label_sets, prepared.model, prepared.prompt_token_ids, request_id
                )
                for result in results:
                    result.label_set = label_set
        except HotswapError as exc:
            _record(prepared, started, results, exc)
            raise
        _record(prepared, started, results)
        self._shadow(prepared, results, request_id)

    def _shadow(
        self, prepared: PreparedRequest, answered: list[GenerationResult], request_id: str
    ) -> None:
        """Under a shadow rollout, run the same prepared request on the candidate in the
        background. Bounded: dropped (and counted) when the requests in flight fill half the
        admission limit or a quarter of it are shadow copies already."""
        route = prepared.model.rollout
        if route is None or route.shadow is None or prepared.shadow:
            return
        queue_long = self._in_flight + prepared.sampling.n > self._max_in_flight // 2
        if queue_long or len(self._shadows) >= max(1, self._max_in_flight // 4):
            route.tracker.dropped()
            return
        copy = dataclasses.replace(prepared, model=route.shadow, protocol="shadow", shadow=True)
        task = asyncio.get_running_loop().create_task(
            self._run_shadow(copy, route, answered, f"{request_id}-shadow")
        )
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    async def _run_shadow(
        self,
        copy: PreparedRequest,
        route: RolloutRoute,
        answered: list[GenerationResult],
        request_id: str,
    ) -> None:
        """The candidate's answer to a shadow copy: compared with the current version's
        answer, recorded, and dropped."""
        started = time.perf_counter()
        try:
            results = await self._complete(copy, request_id)
        except HotswapError as exc:
            route.tracker.record(Role.CANDIDATE, _outcome(copy, started, [], exc))
            return
        except Exception:
            logger.exception("A shadow copy failed on %s@%s", copy.model.name, copy.model.version)
            return
        route.tracker.agreement(_answer(copy.model, results[0]) == _answer(copy.model, answered[0]))
        route.tracker.record(Role.CANDIDATE, _outcome(copy, started, results))

    async def complete(self, prepared: PreparedRequest, request_id: str) -> list[GenerationResult]:
        """`_complete`, and under a rollout its outcome recorded for the gates and, for a
        shadow rollout, a copy started on the candidate once the answer is ready."""
        started = time.perf_counter()
        try:
            results = await self._complete(prepared, request_id)
        except HotswapError as exc:
            _record(prepared, started, [], exc)
            raise
        _record(prepared, started, results)
        self._shadow(prepared, results, request_id)
        return results

    async def _complete(self, prepared: PreparedRequest, request_id: str) -> list[GenerationResult]:
        """Run to the end and return each choice's whole text, in `index` order. Under a schema
        every choice validates against the user's schema: one that does not is generated again
        on its own (up to the policy's `max_retries`, another seed, temperature > 0, counted
        `retried`); a choice's last failure raises `SchemaViolation`. Usage counts the returned
        attempts only. A classification task's labels are scored: each choice carries its
        label's verdict, and a greedy call is answered with the most probable label. A
        multi-label task's label probabilities are read beside the generation (not for a
        shadow copy: they would not be returned)."""
        plan = prepared.labels
        if plan is None:
            if prepared.label_sets is None or prepared.shadow:
                return await self._generate(prepared, request_id)
            scoring = asyncio.ensure_future(
                self._scorer.label_sets(
                    prepared.label_sets, prepared.model, prepared.prompt_token_ids, request_id
                )
            )
            try:
                results = await self._generate(prepared, request_id)
            except BaseException:
                scoring.cancel()
                raise
            label_set = await scoring
            for result in results:
                result.label_set = label_set
            return results
        if plan.answer_directly:
            distribution, results = await self._answer(prepared, plan, request_id)
        else:
            results = await self._generate(prepared, request_id)
            distribution = await self._scorer.distribution(
                plan, prepared.model, prepared.prompt_token_ids, request_id
            )
        for result in results:
            document = result.output
            label = document.get(plan.field) if isinstance(document, dict) else None
            result.label = verdict(plan, distribution, label)
            if not prepared.shadow:
                self._labels.observe_verdict(prepared.model, result.label)
            if result.label.abstained:
                result.text, result.output = "", None
        return results

    async def _answer(
        self, prepared: PreparedRequest, plan: LabelPlan, request_id: str
    ) -> tuple[LabelDistribution, list[GenerationResult]]:
        """Score the labels and answer with the most probable one (as training wrote it)."""
        with self._engine_run(prepared, choices=1) as run:
            distribution = await self._scorer.distribution(
                plan, prepared.model, prepared.prompt_token_ids, request_id
            )
            best, _ = distribution.best
            run.token(len(plan.trie.sequences[plan.trie.labels.index(best)]) + 1)
        result = GenerationResult(
            model=prepared.model,
            text=label_answer(plan.field, best),
            finish_reason="stop",
            prompt_tokens=len(prepared.prompt_token_ids),
            completion_tokens=run.completion_tokens,
        )
        outcome = await self._judge(prepared, result, retrying=False)
        if outcome is not None and not outcome.valid and prepared.schema is not None:
            raise self._schemas.violation(prepared.schema, outcome, attempts=1)
        return distribution, [result]

    async def _generate(self, prepared: PreparedRequest, request_id: str) -> list[GenerationResult]:
        """`complete`'s generation: every choice run, validated and retried."""
        retries = self._schemas.max_retries if prepared.schema is not None else 0
        results = _fresh(prepared)
        await _drain(self._attempt(prepared, request_id, results))
        failing = await self._failing(prepared, results, retrying=retries > 0)
        # A document cut by max_tokens (a grammar that cannot close it early) would be cut
        # again: it is not retried.
        cut = {i: o for i, o in failing.items() if results[i].finish_reason == "length"}
        for attempt in range(1, retries + 1):
            for index in [i for i in failing if i not in cut]:
                rerun = [GenerationResult(model=prepared.model, index=index)]
                run_id = f"{request_id}-{index}-retry{attempt}"
                await _drain(self._attempt(_retry(prepared, index, attempt), run_id, rerun))
                results[index] = rerun[0]
            failing = await self._failing(
                prepared, [results[i] for i in failing if i not in cut], retrying=attempt < retries
            )
            cut |= {i: o for i, o in failing.items() if results[i].finish_reason == "length"}
        if cut:
            assert prepared.schema is not None
            raise self._schemas.violation(
                prepared.schema, next(iter(cut.values())), cut_at=prepared.sampling.max_tokens
            )
        if failing:
            assert prepared.schema is not None
            raise self._schemas.violation(
                prepared.schema, next(iter(failing.values())), attempts=retries + 1
            )
        return results

    async def _failing(
        self, prepared: PreparedRequest, results: list[GenerationResult], retrying: bool
    ) -> dict[int, ValidationOutcome]:
        """The choices among `results` whose document fails the schema, by index."""
        failing = {}
        for result in results:
            outcome = await self._judge(prepared, result, retrying)
            if outcome is not None and not outcome.valid:
                failing[result.index] = outcome
        return failing

    async def _attempt(
        self, prepared: PreparedRequest, request_id: str, results: list[GenerationResult]
    ) -> AsyncGenerator[Chunk, None]:
        """One engine run of `len(results)` choices; fills in `results` (text, counts,
        log-probabilities) as it goes, the engine's choice i into `results[i]`."""
        for result in results:
            result.prompt_tokens = len(prepared.prompt_token_ids)
        parts: list[list[str]] = [[] for _ in results]
        with self._engine_run(prepared, choices=len(results)) as run:
            async for chunk in self._engine.generate(
                prepared.prompt_token_ids, prepared.sampling, request_id, prepared.model.lora
            ):
                result = results[chunk.index]
                parts[chunk.index].append(chunk.text)
                result.completion_tokens = chunk.completion_tokens
                result.finish_reason = chunk.finish_reason
                result.logprobs.extend(chunk.logprobs)
                run.token(sum(r.completion_tokens for r in results))
                yield dataclasses.replace(chunk, index=result.index)
        for result, texts in zip(results, parts, strict=True):
            result.text = "".join(texts)

    @contextmanager
    def _engine_run(self, prepared: PreparedRequest, choices: int) -> Iterator[_EngineRun]:
        """One run on the engine, accounted: `choices` more requests in flight while it lasts
        (a shadow copy is not counted), its request metrics recorded when it ends, with the
        status `ok`, the error's code, or `aborted` (cancelled, or the stream closed)."""
        model = prepared.model
        run = _EngineRun(
            RequestRecorder(model.name, str(model.version or ""), prepared.protocol, prepared.route)
        )
        counted = 0 if prepared.shadow else choices
        self._in_flight += counted
        try:
            yield run
            run.status = "ok"
        except HotswapError as exc:
            run.status = exc.code
            raise
        finally:
            self._in_flight -= counted
            run.recorder.finish(run.status, len(prepared.prompt_token_ids), run.completion_tokens)

    async def _judge(
        self, prepared: PreparedRequest, result: GenerationResult, retrying: bool
    ) -> ValidationOutcome | None:
        """Validate the output against the user's original schema; count its outcome (an
        invalid one about to be retried counts as `retried`) and its labels. It runs in the
        policy's validation sandbox, off the event loop."""
        admitted = prepared.schema
        if admitted is None:
            return None
        outcome = await self._schemas.judge(admitted, result.text)
        result.output, result.valid = outcome.document, outcome.valid
        if prepared.shadow:  # the candidate's figures go to its rollout, not the name's
            return outcome
        name = prepared.model.name
        if outcome.valid:
            SCHEMA_OUTCOMES.labels(name, "valid").inc()
            self._labels.observe(name, prepared.model.task, result.output)
        else:
            SCHEMA_OUTCOMES.labels(name, "retried" if retrying else "invalid").inc()
        return outcome


@dataclass
class _EngineRun:
    """The request metrics of one engine run, as it goes."""

    recorder: RequestRecorder
    completion_tokens: int = 0
    status: str = "aborted"

    def token(self, completion_tokens: int) -> None:
        """The run has produced `completion_tokens` so far (all its choices together)."""
        self.completion_tokens = completion_tokens
        self.recorder.token(completion_tokens)


def _record(
    prepared: PreparedRequest,
    started: float,
    results: list[GenerationResult],
    error: HotswapError | None = None,
) -> None:
    """Under a rollout, the request's outcome goes to the gates (a shadow copy's is recorded
    by `_run_shadow`)."""
    route = prepared.model.rollout
    if route is not None and not prepared.shadow:
        route.tracker.record(route.role, _outcome(prepared, started, results, error))


def _outcome(
    prepared: PreparedRequest,
    started: float,
    results: list[GenerationResult],
    error: HotswapError | None = None,
) -> Outcome:
    """What the gates learn from one request: its time, an engine error, a schema violation
    (invalid), or each choice's validity and labels."""
    latency = time.perf_counter() - started
    if isinstance(error, SchemaViolation):
        return Outcome(latency_s=latency, valid=False)
    if error is not None:
        return Outcome(latency_s=latency, error=True)
    judged = [result.valid for result in results if result.valid is not None]
    task = prepared.model.task
    return Outcome(
        latency_s=latency,
        valid=all(judged) if judged else None,
        labels=tuple(
            label
            for result in results
            if task is not None
            for label in labels_of(task, result.output)
        ),
    )


def _answer(model: ServedModel, result: GenerationResult) -> object:
    """What a shadow answer is compared on: its labels, else its document, else its text."""
    labels = labels_of(model.task, result.output) if model.task is not None else []
    if labels:
        return tuple(labels)
    return result.output if result.output is not None else result.text


def _fresh(
    prepared: PreparedRequest, results: list[GenerationResult] | None = None
) -> list[GenerationResult]:
    """`results` (empty, or one empty result per choice) filled with a result per choice."""
    results = results if results is not None else []
    results[:] = [
        GenerationResult(model=prepared.model, index=i) for i in range(prepared.sampling.n)
    ]
    return results


async def _drain(chunks: AsyncGenerator[Chunk, None]) -> None:
    async with aclosing(chunks):
        async for _ in chunks:
            pass


def _retry(prepared: PreparedRequest, index: int, attempt: int) -> PreparedRequest:
    """Choice `index` of the request alone, with another seed (the engine seeds choice i with
    `seed + i`) and a temperature that lets it differ."""
    sampling = prepared.sampling
    retry = dataclasses.replace(
        sampling,
        n=1,
        seed=((sampling.seed or 0) + index + attempt * sampling.n) % (MAX_SEED + 1),
        temperature=max(sampling.temperature, RETRY_MIN_TEMPERATURE),
    )
    return dataclasses.replace(prepared, sampling=retry)
