"""How long a document the grammar can force, read off the regex outlines decodes with.

Shared by the server (`server.structured.budget`: `max_tokens` checks and defaults) and the
evaluator (`training.evaluate`: the same `max_tokens` as serving), so it lives in `adapters`.

The budget is computed on the regex (`adapters.json_grammar.schema_regex`, the very regex the
engine decodes with under the `outlines` backend), not on the schema: the regex is what
constrains decoding, so its longest match is the longest document the engine can produce, with
outlines' `$ref` depth cut-off included, which a schema walk would have to re-implement.

Tokens: the model's tokens are byte-level BPE pieces, at least one byte each, and a character
can take up to four bytes; so a document needs at most `max_bytes` tokens, plus one for the
end-of-sequence token outlines requires once the document is complete. Characters do not
bound tokens (a 4-byte character may be generated as 4 byte tokens).
"""

from __future__ import annotations

import re._constants as sre_c
import re._parser as sre_p
from dataclasses import dataclass
from typing import Any, Literal

from adapters.json_grammar import schema_regex

BudgetProblem = Literal["unsupported", "too_deep", "invalid_schema"]


class BudgetError(ValueError):
    """The grammar cannot be measured; `problem` says why (the server's refusal reason)."""

    def __init__(self, problem: BudgetProblem, message: str) -> None:
        super().__init__(message)
        self.problem: BudgetProblem = problem
        self.message = message

    def __reduce__(self) -> tuple[type[BudgetError], tuple[BudgetProblem, str]]:
        return (type(self), (self.problem, self.message))


@dataclass(frozen=True)
class DocumentBudget:
    """Upper bounds for one document the grammar accepts; None where unbounded."""

    max_chars: int | None
    max_bytes: int | None

    @property
    def max_tokens(self) -> int | None:
        """Tokens a complete answer can need: one per byte at worst, plus end-of-sequence."""
        return None if self.max_bytes is None else self.max_bytes + 1

    @property
    def bounded(self) -> bool:
        return self.max_bytes is not None


def regex_for_schema(schema: dict[str, Any]) -> str:
    """The regex the engine decodes `schema` with (compact JSON, `adapters.json_grammar`)."""
    try:
        return schema_regex(schema)
    except (ValueError, TypeError) as exc:
        raise BudgetError(
            "unsupported", f"outlines cannot turn the schema into a regex: {exc}"
        ) from exc


def regex_budget(regex: str) -> DocumentBudget:
    """Longest match of `regex` in characters and in UTF-8 bytes (None when unbounded)."""
    try:
        parsed = sre_p.parse(regex)
        chars, nbytes = _measure(list(parsed))
    except RecursionError as exc:
        raise BudgetError("too_deep", "the grammar nests too deeply") from exc
    except (sre_c.error, OverflowError) as exc:
        raise BudgetError("invalid_schema", f"the grammar's regex cannot be parsed: {exc}") from exc
    return DocumentBudget(max_chars=chars, max_bytes=nbytes)


def document_budget(schema: dict[str, Any]) -> DocumentBudget:
    """Budget of the documents the engine can generate for `schema` (pass the bounded schema)."""
    return regex_budget(regex_for_schema(schema))


def max_document_chars(schema: dict[str, Any]) -> int | None:
    """Upper bound on the characters of any document the grammar for `schema` accepts."""
    return document_budget(schema).max_chars


def _measure(items: list[Any]) -> tuple[int | None, int | None]:
    chars: int | None = 0
    nbytes: int | None = 0
    for op, av in items:
        c, b = _measure_item(op, av)
        chars = None if chars is None or c is None else chars + c
        nbytes = None if nbytes is None or b is None else nbytes + b
    return chars, nbytes


def _measure_item(op: Any, av: Any) -> tuple[int | None, int | None]:
    if op is sre_c.LITERAL:
        return 1, len(chr(av).encode("utf-8", "surrogatepass"))
    if op is sre_c.NOT_LITERAL or op is sre_c.ANY:
        return 1, 4
    if op is sre_c.IN:
        return 1, _class_bytes(av)
    if op is sre_c.AT:
        if av in (sre_c.AT_BOUNDARY, sre_c.AT_NON_BOUNDARY):  # vLLM refuses these too
            raise BudgetError("unsupported", "the grammar uses a word boundary")
        return 0, 0
    if op is sre_c.SUBPATTERN:
        return _measure(list(av[3]))
    if op is sre_c.ATOMIC_GROUP:
        return _measure(list(av))
    if op is sre_c.BRANCH:
        best_c: int | None = 0
        best_b: int | None = 0
        for branch in av[1]:
            c, b = _measure(list(branch))
            best_c = None if best_c is None or c is None else max(best_c, c)
            best_b = None if best_b is None or b is None else max(best_b, b)
        return best_c, best_b
    if op in (sre_c.MAX_REPEAT, sre_c.MIN_REPEAT, sre_c.POSSESSIVE_REPEAT):
        _low, high, sub = av
        c, b = _measure(list(sub))
        if high == sre_c.MAXREPEAT:
            return (0 if c == 0 else None), (0 if b == 0 else None)
        return (None if c is None else c * high), (None if b is None else b * high)
    raise BudgetError(
        "unsupported", f"the grammar uses {op} (lookaround or backreference), which vLLM refuses"
    )


def _class_bytes(members: Any) -> int:
    """Widest UTF-8 encoding of a character in a `[...]` class (4 when in doubt)."""
    highest = 0
    for op, value in members:
        if op is sre_c.NEGATE or op is sre_c.CATEGORY:
            return 4
        if op is sre_c.LITERAL:
            highest = max(highest, value)
        elif op is sre_c.RANGE:
            highest = max(highest, value[1])
        else:
            return 4
    return len(chr(highest).encode("utf-8", "surrogatepass"))
