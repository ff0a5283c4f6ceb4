"""The caps `bound_schema` applies where a schema leaves its language open.

A finite language costs compile time with outlines: its token index visits every DFA state and
scans the whole vocabulary from each, and a string of at most n characters needs n + 1 states
(no regex can do with fewer), an array of at most n items n copies of its item. Measured with
the default model (SmolLM2-135M, 49,152 tokens), CPU time per string position: about 0.012 s
for printable-ASCII strings, 0.033 s for any-Unicode strings (an unbounded string: 0.05 s in
all). So the compile cost of a bounded schema grows with its longest document, and the caps
below keep ordinary schemas (a few short fields, a short list) within the compile guard's 5 s:
a user's own larger bounds are kept, and then the guard decides.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class SchemaLimits(BaseModel):
    """Caps for the open parts of a JSON Schema. User bounds are never tightened."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_string_length: int = Field(
        default=32,
        ge=0,
        description="maxLength given to strings without one (characters, escapes count as one).",
    )
    max_array_items: int = Field(
        default=4, ge=0, description="maxItems given to arrays without one."
    )
    max_integer_digits: int = Field(
        default=15,
        ge=1,
        le=300,
        description="Digits of an integer (or of a number's integer part) without both bounds.",
    )
    max_fraction_digits: int = Field(
        default=6, ge=1, le=300, description="Digits after a number's decimal point."
    )
    max_exponent_digits: int = Field(
        default=2,
        ge=1,
        le=4,
        description="Digits of a number's exponent; outlines cannot turn exponents off.",
    )
    max_pattern_repeat: int = Field(
        default=16,
        ge=1,
        description="Upper count given to `*`, `+` and `{n,}` inside a user `pattern`.",
    )
    max_integer_enum: int = Field(
        default=64,
        ge=0,
        description=(
            "An integer with both bounds spanning at most this many values is sent as an `enum`, "
            "which the grammar enforces (outlines ignores minimum/maximum)."
        ),
    )
    max_subschemas: int = Field(
        default=1000,
        ge=1,
        description="Most subschemas accepted at all (checked before any regex is built).",
    )
    max_enum_values: int = Field(default=2000, ge=1, description="Most values in one `enum`.")
    max_ref_recursion: int = Field(
        default=3,
        ge=1,
        description=(
            "How many times one `$ref` may be entered inside itself; deeper, optional parts "
            "(optional properties, array items, anyOf branches) are left out."
        ),
    )
    max_depth: int = Field(
        default=32, ge=1, description="Deepest nesting of subschemas accepted at all."
    )
    max_pattern_length: int = Field(
        default=1000, ge=1, description="Longest `pattern` or `patternProperties` key (chars)."
    )
    max_expanded_size: int = Field(
        default=20_000,
        ge=1,
        description=(
            "Most subschemas once every `$ref` is inlined (each target counted once per use, a "
            "cycle once): bounds the cost of validating a document against the schema."
        ),
    )
    max_count_value: int = Field(
        default=1_000_000,
        ge=0,
        description="Largest minLength/maxLength/minItems/maxItems/min-/maxProperties/-Contains.",
    )
    string_charset: Literal["unicode", "ascii"] = Field(
        default="ascii",
        description=(
            "Characters a bounded string may hold (without a pattern or format). `ascii` "
            "(printable ASCII and the JSON escapes) compiles about three times faster than "
            "`unicode` and makes the token budget four times tighter (one byte per character)."
        ),
    )
    free_form_objects: Literal["empty", "refuse"] = Field(
        default="empty",
        description=(
            "Objects with no declared properties have unbounded keys in outlines' grammar. "
            "`empty`: generate `{}` (valid when nothing is required); `refuse`: refuse the schema."
        ),
    )
