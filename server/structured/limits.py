"""The caps `bound_schema` applies where a schema leaves its language open.

Every cap is a trade-off measured on this project's machines with the default model
(SmolLM2-135M, 49,152 tokens): outlines builds its token index over every DFA state, and a
capped string or array is one DFA state per character or item, so compile time grows with
the caps (a 64-character string field costs about as much as 64 fixed characters, an array of
8 items eight copies of its item). Unbounded fields compile fast but give no length guarantee.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class SchemaLimits(BaseModel):
    """Caps for the open parts of a JSON Schema. User bounds are never tightened."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_string_length: int = Field(
        default=64,
        ge=0,
        description="maxLength given to strings without one (characters, escapes count as one).",
    )
    max_array_items: int = Field(
        default=8, ge=0, description="maxItems given to arrays without one."
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
        default=32,
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
    max_depth: int = Field(
        default=32, ge=1, description="Deepest nesting of subschemas accepted at all."
    )
    string_charset: Literal["unicode", "ascii"] = Field(
        default="unicode",
        description=(
            "Characters a bounded string may hold. `ascii` (printable ASCII) compiles about three "
            "times faster and makes the token budget four times tighter (one byte per character)."
        ),
    )
    free_form_objects: Literal["empty", "refuse"] = Field(
        default="empty",
        description=(
            "Objects with no declared properties have unbounded keys in outlines' grammar. "
            "`empty`: generate `{}` (valid when nothing is required); `refuse`: refuse the schema."
        ),
    )
