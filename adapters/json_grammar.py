"""The decoding constraint for a JSON Schema, shared by the server and the training evaluator.

Both must constrain decoding identically (evaluation equals serving), and both want compact
JSON: no whitespace between tokens of the document, so fewer tokens to generate. vLLM's
`disable_any_whitespace` does that for the `xgrammar` and `guidance` backends, but its `outlines`
backend ignores it and builds a regex that allows a space around every `:` and `,`. For
`outlines` the constraint is therefore the regex outlines builds for the schema with an empty
whitespace pattern, handed to vLLM as a regex: the same regex the server's schema budget is
computed on and its compile guard compiles.

The result is keyword arguments for `vllm.sampling_params.StructuredOutputsParams`, so this module
does not import vLLM.
"""

from __future__ import annotations

import json
from typing import Any

WHITESPACE_PATTERN = ""


def compact_json(obj: Any) -> str:
    """A document as constrained decoding without whitespace emits it: what training teaches
    (its targets) and what label scoring reads (`adapters.label_trie.label_answer`)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


"""Whitespace allowed between JSON tokens under the `outlines` backend: none (compact)."""


def schema_regex(schema: dict[str, Any] | str) -> str:
    """The regex outlines decodes `schema` with (compact). Raises ValueError when outlines
    cannot express the schema."""
    from outlines_core.json_schema import build_regex_from_schema

    schema_json = schema if isinstance(schema, str) else json.dumps(schema)
    return str(build_regex_from_schema(schema_json, whitespace_pattern=WHITESPACE_PATTERN))


def structured_outputs_kwargs(schema: dict[str, Any], backend: str) -> dict[str, Any]:
    """Keyword arguments of `StructuredOutputsParams` that constrain decoding to compact JSON
    valid for `schema` under vLLM's structured-outputs `backend`."""
    if backend == "outlines":
        return {"regex": schema_regex(schema)}
    return {"json": schema, "disable_any_whitespace": True}
