"""A small multi-label model shared by the server's and training's label-set tests."""

from __future__ import annotations

from typing import Any

SET_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"f": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2}},
    "required": ["f"],
}
SET_MODEL = {
    '{"f":[': {"]": 0.2, '"': 0.8},
    '{"f":["': {"a": 0.75, "b": 0.25},
    '{"f":["a"': {",": 0.5, "]": 0.5},
    '{"f":["b"': {",": 0.4, "]": 0.6},
    '{"f":["a","': {"a": 0.3, "b": 0.7},
    '{"f":["b","': {"a": 0.9, "b": 0.1},
}
"""Next characters after each prefix of an answer to `SET_SCHEMA` (one token per character):
sets [] .2, [a] .3, [a,a] .09, [a,b] .21, [b] .12, [b,a] .072, [b,b] .008; so P(a in set) =
.672, P(b in set) = .41, P(empty) = .2."""
