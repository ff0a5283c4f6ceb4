"""Validating documents against a caller's schema never hangs, fetches, or ends in a 5xx.

Admission (`prepare_schema` -> `check_safety`) refuses non-local references, non-RE2 patterns,
exponential `$ref` fan-out and out-of-range numbers; validation (`ValidationGuard`) runs RE2
in killable worker processes with a deadline and a bounded queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.errors import QueueFull
from server.schema_policy import AdmittedSchema, SchemaPolicy, SchemaValidationRefused
from server.structured import (
    CompileGuard,
    CompileVerdict,
    RefusalReason,
    SchemaLimits,
    SchemaRefusedError,
    ValidationGuard,
    WorkersBusy,
    prepare_schema,
    validate_document,
)

CATASTROPHIC = "^(a+)+$"
SUBJECT = "a" * 5000 + "b"
SLOW_DOCUMENT = json.dumps([{"a": [i]} for i in range(1000)])  # uniqueItems: seconds of CPU
SLOW_SCHEMA = {"type": "array", "uniqueItems": True}


@pytest.fixture
def listener() -> Iterator[tuple[int, socket.socket]]:
    """A TCP listener on 127.0.0.1 whose accepted connections the test counts."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.setblocking(False)
    yield server.getsockname()[1], server
    server.close()


def _accepted(server: socket.socket) -> int:
    count = 0
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        try:
            connection, _ = server.accept()
        except BlockingIOError:
            time.sleep(0.02)
            continue
        connection.close()
        count += 1
    return count


def _refusal(schema: Any) -> SchemaRefusedError:
    with pytest.raises(SchemaRefusedError) as info:
        prepare_schema(schema)
    return info.value


# -- references ----------------------------------------------------------------------------
def test_remote_and_file_references_are_refused_at_admission_without_a_connection(
    listener: tuple[int, socket.socket],
) -> None:
    port, server = listener
    url = f"http://127.0.0.1:{port}/schema.json"
    hostile = [
        {"type": "string", "not": {"$ref": url}},
        {"type": "object", "properties": {"a": {"$ref": url + "#/x"}}},
        {"type": "object", "properties": {"a": {"type": "string"}}, "$defs": {"x": {"$ref": url}}},
        {"type": "object", "properties": {"a": {"$dynamicRef": url + "#meta"}}},
        {"type": "string", "allOf": [{"$ref": "file:///etc/passwd"}]},
        {"type": "string", "not": {"$ref": "other.json#/a"}},
        {"type": "string", "not": {"$ref": f"https://127.0.0.1:{port}/x"}},
    ]
    for schema in hostile:
        refusal = _refusal(schema)
        assert refusal.reason is RefusalReason.UNSUPPORTED
        assert "does not resolve inside the schema" in refusal.message
        named = (f"127.0.0.1:{port}", "file:///etc/passwd", "other.json")
        assert any(ref in refusal.message for ref in named)
    # even a schema that skipped admission: an unresolvable $ref is an error, not a fetch
    outcome = validate_document({"type": "string", "not": {"$ref": url}}, '"x"')
    assert not outcome.valid and "could not be applied" in outcome.errors[0]
    assert _accepted(server) == 0


def test_references_inside_the_document_are_accepted() -> None:
    local = [
        {"type": "object", "properties": {"a": {"$ref": "#/$defs/x"}}, "$defs": {"x": {}}},
        {"type": "object", "properties": {"child": {"$ref": "#"}}},
        {
            "type": "object",
            "properties": {"a": {"type": "string", "not": {"$ref": "#short"}}},
            "$defs": {"s": {"$anchor": "short", "maxLength": 1}},
        },
        {
            "$id": "https://example.com/root.json",
            "type": "string",
            "not": {"$ref": "https://example.com/root.json#/$defs/x"},
            "$defs": {"x": {"const": "no"}},
        },
    ]
    for schema in local:
        prepare_schema(schema)
    assert not validate_document(local[2], '{"a": "x"}').valid
    assert validate_document(local[2], '{"a": "xy"}').valid


# -- patterns ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "pattern": "(a)\\1"},
        {"type": "string", "pattern": "^(?=a)a$"},
        {"type": "string", "not": {"pattern": "(?<!x)y"}},
        {"type": "object", "patternProperties": {"(a)\\1": {"type": "string"}}},
    ],
)
def test_patterns_re2_cannot_run_are_refused(schema: dict[str, Any]) -> None:
    refusal = _refusal(schema)
    assert refusal.reason is RefusalReason.UNSUPPORTED
    assert "RE2" in refusal.message and "#/" in refusal.message


def test_a_pattern_over_the_length_limit_is_refused() -> None:
    refusal = _refusal({"type": "string", "not": {"pattern": "a" * 1001}})
    assert refusal.reason is RefusalReason.TOO_LARGE and "1000" in refusal.message


@pytest.mark.parametrize(
    "schema, document, valid",
    [
        ({"type": "string", "pattern": CATASTROPHIC}, json.dumps(SUBJECT), False),
        ({"patternProperties": {CATASTROPHIC: {"type": "string"}}}, json.dumps({SUBJECT: 1}), True),
        (
            {"patternProperties": {CATASTROPHIC: {}}, "additionalProperties": False},
            json.dumps({SUBJECT: 1}),
            False,
        ),
        (
            {"patternProperties": {CATASTROPHIC: {}}, "unevaluatedProperties": False},
            json.dumps({SUBJECT: 1}),
            False,
        ),
        ({"propertyNames": {"pattern": CATASTROPHIC}}, json.dumps({SUBJECT: 1}), False),
        ({"type": "string", "format": "regex"}, json.dumps("(a)\\1"), False),
    ],
)
def test_a_backtracking_pattern_validates_in_milliseconds(
    schema: dict[str, Any], document: str, valid: bool
) -> None:
    prepare_schema({"type": "string", "not": schema})  # admitted: RE2 runs it in linear time
    started = time.perf_counter()
    outcome = validate_document(schema, document)
    assert time.perf_counter() - started < 0.2
    assert outcome.valid is valid
    assert all(len(error) <= 300 for error in outcome.errors)


# -- exponential structures ----------------------------------------------------------------
def test_exponential_ref_fan_out_is_refused_quickly() -> None:
    defs: dict[str, Any] = {
        f"a{i}": {"allOf": [{"$ref": f"#/$defs/a{i + 1}"}, {"$ref": f"#/$defs/a{i + 1}"}]}
        for i in range(30)
    }
    defs["a30"] = {"type": "string"}
    schema = {"type": "string", "not": {"$ref": "#/$defs/a0"}, "$defs": defs}
    started = time.perf_counter()
    refusal = _refusal(schema)
    assert time.perf_counter() - started < 1.0
    assert refusal.reason is RefusalReason.TOO_LARGE and "inlined" in refusal.message


def test_a_fan_out_within_the_limit_is_accepted() -> None:
    defs: dict[str, Any] = {
        f"a{i}": {"allOf": [{"$ref": f"#/$defs/a{i + 1}"}, {"$ref": f"#/$defs/a{i + 1}"}]}
        for i in range(5)
    }
    defs["a5"] = {"type": "string"}
    prepare_schema({"type": "string", "not": {"$ref": "#/$defs/a0"}, "$defs": defs})
    limits = SchemaLimits(max_expanded_size=10)
    with pytest.raises(SchemaRefusedError):
        prepare_schema({"type": "string", "not": {"$ref": "#/$defs/a0"}, "$defs": defs}, limits)


# -- numbers -------------------------------------------------------------------------------
NUMERIC_KEYWORDS = [
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
]
NUMBERS: list[Any] = [
    0,
    -1,
    1,
    3,
    0.5,
    -0.5,
    1.5,
    5e-324,
    1e-300,
    1e15,
    1e16,
    1e20,
    1e308,
    -1e308,
    2**53 + 1,
    2**63 - 1,
    2**64,
    -(2**64),
    2**1000,
    10**400,
    -(10**5000),
    math.inf,
    -math.inf,
    math.nan,
]
COMPANIONS: list[dict[str, Any]] = [
    {},
    {"minimum": 0},
    {"maximum": 10},
    {"minimum": 0, "maximum": 10},
    {"multipleOf": 3},
    {"minimum": 2**64, "maximum": 2**64 + 3},
]


def test_numeric_keyword_fuzz_ends_only_in_refusals() -> None:
    """Every numeric keyword with huge, tiny, negative, fractional and non-finite values,
    alone and beside other bounds, under every type: a bounded schema or a refusal."""
    types: list[str | None] = ["integer", "number", "string", "array", "object", None]
    for type_, keyword, value, companion in itertools.product(
        types, NUMERIC_KEYWORDS, NUMBERS, COMPANIONS
    ):
        schema: dict[str, Any] = {**companion, keyword: value}
        if type_ is not None:
            schema["type"] = type_
        started = time.perf_counter()
        with contextlib.suppress(SchemaRefusedError):
            prepare_schema(schema)
        assert time.perf_counter() - started < 1.0, schema


def test_a_tiny_multiple_of_bounds_an_integer_range_as_jsonschema_does() -> None:
    schema = {"type": "integer", "minimum": 0, "maximum": 10, "multipleOf": 5e-324}
    bounded = prepare_schema(schema).bounded
    for value in bounded["enum"]:
        assert validate_document(schema, json.dumps(value)).valid


def test_out_of_range_numbers_are_refused_naming_the_limit() -> None:
    refusal = _refusal({"type": "integer", "minimum": -(10**5000), "maximum": 10**5000})
    assert refusal.reason is RefusalReason.INVALID_SCHEMA and "float range" in refusal.message
    refusal = _refusal({"type": "string", "maxLength": 2**64})
    assert refusal.reason is RefusalReason.TOO_LARGE and "maxLength" in refusal.message


def test_integers_beyond_2_53_are_bounded_by_digits_not_a_float_enum() -> None:
    bounded = prepare_schema({"type": "integer", "minimum": 2**64, "maximum": 2**64 + 3}).bounded
    assert "enum" not in bounded


# -- the validation sandbox ----------------------------------------------------------------
@pytest.fixture(scope="module")
def validator() -> Iterator[ValidationGuard]:
    with ValidationGuard(timeout_s=1.0) as guard:
        guard.start()
        yield guard


async def test_a_slow_validation_is_killed_at_the_deadline_while_the_loop_runs() -> None:
    with ValidationGuard(timeout_s=0.5) as guard:
        guard.start()
        first = guard.worker_pids()
        ticks = 0

        async def heartbeat() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.02)
                ticks += 1

        beating = asyncio.create_task(heartbeat())
        started = time.perf_counter()
        with pytest.raises(SchemaRefusedError) as info:
            await guard.validate(SLOW_SCHEMA, SLOW_DOCUMENT)
        elapsed = time.perf_counter() - started
        beating.cancel()
        assert info.value.reason is RefusalReason.TIMEOUT and "0.5 s" in info.value.message
        assert elapsed < 2.0
        assert ticks >= 10  # the event loop kept running during the validation
        outcome = await guard.validate({"type": "integer"}, "3")  # a fresh worker answers
        assert outcome.valid and guard.worker_pids() != first


async def test_the_policy_answers_a_422_when_validation_exceeds_the_limit() -> None:
    with ValidationGuard(timeout_s=0.5) as guard:
        policy = SchemaPolicy(None, validator=guard)
        admitted = AdmittedSchema(prepare_schema(SLOW_SCHEMA), None)
        with pytest.raises(SchemaValidationRefused) as info:
            await policy.judge(admitted, SLOW_DOCUMENT)
        assert info.value.status == 422 and "limit" in info.value.message


async def test_a_full_validation_queue_is_a_429_not_an_unbounded_wait() -> None:
    with ValidationGuard(timeout_s=1.0, workers=1, max_waiting=0) as guard:
        guard.start()
        policy = SchemaPolicy(None, validator=guard)
        admitted = AdmittedSchema(prepare_schema(SLOW_SCHEMA), None)
        slow = asyncio.create_task(guard.validate(SLOW_SCHEMA, SLOW_DOCUMENT))
        await asyncio.sleep(0.1)
        with pytest.raises(WorkersBusy):
            await guard.validate({"type": "integer"}, "3")
        with pytest.raises(QueueFull) as info:
            await policy.judge(admitted, "[]")
        assert info.value.status == 429
        with pytest.raises(SchemaRefusedError):
            await slow
        assert (await guard.validate({"type": "integer"}, "3")).valid  # the slot came back


async def test_the_sandbox_agrees_with_in_process_validation(validator: ValidationGuard) -> None:
    schema = {
        "type": "object",
        "properties": {
            "n": {"type": "integer", "minimum": 1},
            "when": {"type": "string", "format": "date-time"},
            "key": {"type": "string", "pattern": CATASTROPHIC},
        },
        "required": ["n"],
    }
    for text in ['{"n": 2, "when": "2024-01-01T10:00:00Z"}', '{"n": 0}', "{", '{"key": "ab"}']:
        remote = await validator.validate(schema, text)
        local = validate_document(schema, text)
        assert (remote.valid, remote.errors) == (local.valid, local.errors)
        assert remote.document == local.document
    started = time.perf_counter()
    assert not (await validator.validate(schema, json.dumps({"n": 1, "key": SUBJECT}))).valid
    assert time.perf_counter() - started < 0.5


async def test_ordinary_validation_round_trip_is_fast(validator: ValidationGuard) -> None:
    schema = {
        "type": "object",
        "properties": {
            "intent": {"enum": ["buy", "sell", "hold"]},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
        },
        "required": ["intent", "confidence"],
    }
    text = '{"intent": "buy", "confidence": 0.9, "tags": ["a", "b"]}'
    await validator.validate(schema, text)  # the worker's validator for this schema is built
    rounds = []
    for _ in range(50):
        started = time.perf_counter()
        assert (await validator.validate(schema, text)).valid
        rounds.append(time.perf_counter() - started)
    median_ms = statistics.median(rounds) * 1000
    print(f"validation round trip: median {median_ms:.2f} ms, max {max(rounds) * 1000:.2f} ms")
    assert median_ms < 50


# -- the compile guard's queue -------------------------------------------------------------
async def test_a_full_compile_queue_is_a_429(tmp_path: Path) -> None:
    guard = CompileGuard(tmp_path, workers=1, max_waiting=0)
    started, release = threading.Event(), threading.Event()

    def held_check(schema: Any, mode: Any = None) -> CompileVerdict:
        started.set()
        release.wait(timeout=30)  # held until the test has seen the full queue
        return CompileVerdict(ok=True, digest="x")

    guard.check_sync = held_check  # type: ignore[method-assign]
    policy = SchemaPolicy(guard)
    try:
        first = asyncio.create_task(guard.check({"type": "integer"}))
        assert await asyncio.to_thread(started.wait, 30)
        with pytest.raises(WorkersBusy):
            await guard.check({"type": "boolean"})
        with pytest.raises(QueueFull) as info:
            await policy.admit({"type": "boolean"})
        assert info.value.status == 429 and "busy" in info.value.message
        release.set()
        assert (await first).ok
        assert (await guard.check({"type": "boolean"})).ok  # the slot came back
    finally:
        release.set()
        guard.close()
