"""What the server asks of the engine's structured-output manager, per request, beyond vLLM's
own parameters: budget-aware decoding and the grammar engine.

A vLLM general plugin (`vllm.general_plugins`: `hotswap_structured_requests`), run in every
process vLLM starts, the engine core included. vLLM 0.32 builds one structured-output
backend per engine and uses it for every request ("We do NOT support different backends on a
per-request basis", `vllm/v1/structured_output/__init__.py`). `register()` extends the one
method where a request's grammar is built, `StructuredOutputManager._create_grammar`, in the
manager's compile threads (`server.structured.engine_grammars`):

- **Budget-aware decoding** (`budget_aware`, outlines grammars): the grammar's token mask is
  narrowed, each step, to the tokens after which the shortest completion of the document plus
  end-of-sequence still fits in the tokens left (`server.structured.completions`). Any
  `max_tokens` at least the schema's shortest document then gets a complete, valid document
  ending in end-of-sequence. The server asks for it only when `max_tokens` is below the
  longest document the schema allows.
- **A fallback grammar engine** (`engine`: `guidance` or `xgrammar`) for schemas outlines
  cannot compile within the limits or express: the request's grammar is compiled from
  `schema` by that backend, built once per engine beside the outlines one. Such a request
  carries a placeholder regex (`FALLBACK_REGEX`) as its vLLM structured-output parameter, so
  vLLM's front end (validating for outlines) never walks the schema outlines cannot handle.

Why the manager and not a vLLM v1 logits processor: a logits processor runs in the model
runner and sees logits, while each request's grammar state lives in the engine core's
structured-output manager. The masks join the grammar's bitmask there, and vLLM applies that
bitmask to the logits as for any constrained request (all backends share its layout: one bit
per token in int32 words).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from adapters.json_grammar import structured_outputs_kwargs

FallbackEngine = Literal["guidance", "xgrammar"]

EXTRA_ARG = "hotswap_structured"
FALLBACK_REGEX = "hotswap-fallback-grammar"
"""What a fallback request gives vLLM as its regex; its grammar is never built."""
_MARKER = "_hotswap_structured_requests"


def structured_request(
    schema: dict[str, Any] | None,
    backend: str,
    budget_aware: bool = False,
    engine: FallbackEngine | None = None,
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """vLLM's `StructuredOutputsParams` keyword arguments and `SamplingParams.extra_args` of a
    request under `schema` (None, None without one). `backend` is the engine's configured one."""
    if schema is None:
        return None, None
    if engine is None:
        kwargs = structured_outputs_kwargs(schema, backend)
        return kwargs, {EXTRA_ARG: {"budget_aware": True}} if budget_aware else None
    asked = {"engine": engine, "schema": json.dumps(fallback_schema(schema, engine))}
    return {"regex": FALLBACK_REGEX}, {EXTRA_ARG: asked}


def fallback_schema(schema: dict[str, Any], engine: FallbackEngine) -> dict[str, Any]:
    """The schema as `engine` compiles it: for llguidance, compact JSON and keywords it lacks
    ignored rather than refused (the server validates every document against the original)."""
    if engine == "guidance":
        return {**schema, "x-guidance": {"lenient": True, "whitespace_flexible": False}}
    return schema


def requested(sampling_params: Any) -> dict[str, Any]:
    """What a request's vLLM `SamplingParams` ask of the manager ({}: nothing)."""
    extra = getattr(sampling_params, "extra_args", None) or {}
    asked = extra.get(EXTRA_ARG)
    return asked if isinstance(asked, dict) else {}


def register() -> None:
    """Extend the structured-output manager's grammar building (idempotent)."""
    from vllm.v1.structured_output import StructuredOutputManager

    if getattr(StructuredOutputManager, _MARKER, False):
        return
    from server.structured.engine_grammars import extended_create_grammar

    StructuredOutputManager._create_grammar = extended_create_grammar(
        StructuredOutputManager._create_grammar
    )
    setattr(StructuredOutputManager, _MARKER, True)
