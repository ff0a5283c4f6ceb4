"""The task every client of the suite asks: extract a person's name and city, two short
strings, shown one example first (the base model is tiny: the suite checks shapes and types,
not that the answer is right)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Person(BaseModel):
    name: str = Field(max_length=40)
    city: str = Field(max_length=40)


QUESTION = "Ada Lovelace lives in London. Give her name and city."
MESSAGES: list[dict[str, Any]] = [
    {"role": "user", "content": "Grace Hopper lives in New York. Give her name and city."},
    {"role": "assistant", "content": '{"name": "Grace Hopper", "city": "New York"}'},
    {"role": "user", "content": QUESTION},
]

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 40},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
WEATHER_QUESTION = "What is the weather in Paris, in celsius?"


def assert_person(value: object) -> Person:
    """`value` is a `Person` whose fields are strings within their limits."""
    assert isinstance(value, Person), repr(value)
    assert isinstance(value.name, str) and len(value.name) <= 40
    assert isinstance(value.city, str) and len(value.city) <= 40
    return value


def token_limit(max_tokens: int | None, field: str = "max_tokens") -> dict[str, Any]:
    """The keyword argument that sets the limit, or none at all when it is unset."""
    return {} if max_tokens is None else {field: max_tokens}
