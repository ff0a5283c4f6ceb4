"""Validation of generated documents against the user's original schema, which cannot hang,
fetch or stall the server.

`validate_document` is Python `jsonschema` (the schema's own `$schema` draft, Draft 2020-12 by
default, formats checked) with two changes: every regular expression of the schema (`pattern`,
`patternProperties`, format `regex`) runs on RE2, whose matching is linear in the subject, and
references resolve against a registry that never retrieves (an unresolvable `$ref` is a
validation error, never a fetch). The server runs it in `ValidationGuard`'s killable worker
processes, off the event loop, under a wall-clock deadline and an address-space limit; a
validation over either is killed and answered with a `SchemaRefusedError` (422).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, time
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import jsonschema._keywords
import jsonschema._legacy_keywords
import jsonschema._utils
import re2
import referencing.exceptions
from jsonschema import FormatChecker
from jsonschema.protocols import Validator

from server.structured.errors import RefusalReason, SchemaRefusedError
from server.structured.keywords import validator_for
from server.structured.safety import compile_pattern, local_registry, pattern_error
from server.structured.workers import WorkerPool, WorkerProcess

DEFAULT_TIMEOUT_S = 2.0
DEFAULT_MEMORY_LIMIT_MB = 1024
DEFAULT_MAX_WAITING = 32
DEFAULT_MAX_ERRORS = 10
_MAX_MESSAGE_CHARS = 300


@dataclass(frozen=True)
class ValidationOutcome:
    """Result of validating one generated document against the user's schema."""

    valid: bool
    errors: tuple[str, ...] = ()
    document: Any = field(default=None, compare=False)


def validate_document(
    schema: dict[str, Any] | bool, text: str, max_errors: int = DEFAULT_MAX_ERRORS
) -> ValidationOutcome:
    """Parse `text` as JSON and validate it against `schema` (RE2 regexes, no retrieval).

    Runs in the calling thread without a deadline: the server calls it through
    `ValidationGuard`, which bounds it."""
    return validate_serialized(json.dumps(schema), text, max_errors)


def validate_serialized(schema_json: str, text: str, max_errors: int) -> ValidationOutcome:
    """`validate_document` for a schema given as JSON text (validators are cached by it)."""
    try:
        document = parse_document(text)
    except (ValueError, RecursionError) as exc:
        return ValidationOutcome(False, (f"not valid JSON: {exc}",))
    valid, errors = _errors(_validator(schema_json), document, max_errors)
    return ValidationOutcome(valid, errors, document)


def value_is_valid(schema: dict[str, Any], value: Any) -> bool:
    """Whether one value validates against a small schema, in-process (RE2 regexes, no
    retrieval): for checks whose cost the caller bounds, such as an enum's values."""
    return bool(_validator(json.dumps(schema, sort_keys=True)).is_valid(value))


def parse_document(text: str) -> Any:
    """`text` as JSON, NaN and Infinity refused (raises ValueError or RecursionError)."""
    return json.loads(text, parse_constant=_reject_constant)


class ValidationGuard:
    """Validates documents in sandboxed worker processes (deadline, memory limit).

    `start()` (from a thread) warms a worker; `close()` stops them. `validate` raises
    `SchemaRefusedError` (TIMEOUT, MEMORY, CRASHED) when a validation is killed, `WorkersBusy`
    when `workers + max_waiting` validations are already running or waiting, RuntimeError
    when closed.
    """

    def __init__(
        self,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        memory_limit_mb: int = DEFAULT_MEMORY_LIMIT_MB,
        workers: int = 1,
        max_waiting: int = DEFAULT_MAX_WAITING,
    ) -> None:
        if timeout_s <= 0 or memory_limit_mb <= 0:
            raise ValueError("timeout_s and memory_limit_mb must be positive")
        self.timeout_s = timeout_s
        self.memory_limit_mb = memory_limit_mb
        self._pool = WorkerPool("schema validation", self._spawn, workers, max_waiting)

    def start(self) -> None:
        self._pool.warm()

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> ValidationGuard:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def worker_pids(self) -> list[int]:
        return self._pool.worker_pids()

    async def validate(
        self, schema: dict[str, Any] | bool, text: str, max_errors: int = DEFAULT_MAX_ERRORS
    ) -> ValidationOutcome:
        """`validate_document` in a worker process, awaited without blocking the event loop."""
        return await self._pool.submit(self.validate_sync, schema, text, max_errors)

    def validate_sync(
        self, schema: dict[str, Any] | bool, text: str, max_errors: int = DEFAULT_MAX_ERRORS
    ) -> ValidationOutcome:
        """`validate` for a thread (blocks until the answer or the deadline)."""
        request = {"schema": json.dumps(schema), "text": text, "max_errors": max_errors}
        worker = self._pool.acquire()
        answer = worker.call(request, self.timeout_s, self.timeout_s)
        if answer.message is not None and "valid" in answer.message:
            self._pool.release(worker)
            errors = tuple(str(e) for e in answer.message["errors"])
            return ValidationOutcome(bool(answer.message["valid"]), errors, _parsed(text))
        self._pool.retire(worker)
        if answer.stopped in ("cpu", "wall"):
            raise SchemaRefusedError(
                RefusalReason.TIMEOUT,
                f"validating the document against the JSON Schema took longer than the "
                f"{self.timeout_s:g} s limit",
            )
        if answer.message is not None or worker.exit_signal() is not None:
            raise SchemaRefusedError(
                RefusalReason.MEMORY,
                f"validating the document against the JSON Schema needed more than the "
                f"{self.memory_limit_mb} MB limit",
            )
        raise SchemaRefusedError(RefusalReason.CRASHED, "the schema validation worker died")

    def _spawn(self) -> WorkerProcess:
        return WorkerProcess("server.structured._validation_worker", self.memory_limit_mb, [])


# -- RE2 inside jsonschema -------------------------------------------------------------------
class _RE2Search:
    """What jsonschema's keywords use of `re` (`re.search(pattern, string)`), run by RE2."""

    @staticmethod
    def search(pattern: str, string: str) -> Any:
        return _compiled(pattern).search(string)


@lru_cache(maxsize=256)
def _compiled(pattern: str) -> Any:
    return compile_pattern(pattern)


def _use_re2_in_jsonschema() -> None:
    """Point the keyword modules' `re` (pattern, patternProperties, additionalProperties and
    unevaluatedProperties all call `re.search`) at RE2; fails loudly if jsonschema changes."""
    for module in (jsonschema._keywords, jsonschema._legacy_keywords, jsonschema._utils):
        if getattr(module, "re", None) not in (re, _RE2Search):
            raise RuntimeError(f"{module.__name__} no longer uses `re`: review the RE2 hook")
        module.re = _RE2Search


_use_re2_in_jsonschema()


@lru_cache(maxsize=32)
def _validator(schema_json: str) -> Validator:
    schema = json.loads(schema_json)
    cls = validator_for(schema)
    return cls(schema, registry=local_registry(), format_checker=_format_checker(cls))


def _errors(validator: Validator, document: Any, max_errors: int) -> tuple[bool, tuple[str, ...]]:
    errors: list[str] = []
    try:
        for error in validator.iter_errors(document):
            where = "/".join(str(p) for p in error.absolute_path) or "(root)"
            errors.append(_shorten(f"{where}: {error.message}"))
            if len(errors) >= max_errors:
                break
    except (referencing.exceptions.Unresolvable, RecursionError) as exc:
        errors.append(_shorten(f"schema could not be applied: {exc}"))
    except re2.error as exc:
        errors.append(_shorten(f"schema could not be applied: {pattern_error(exc)}"))
    return not errors, tuple(errors)


def _shorten(message: str) -> str:
    """An error message cut to `_MAX_MESSAGE_CHARS` (jsonschema quotes whole instances)."""
    if len(message) <= _MAX_MESSAGE_CHARS:
        return message
    return message[: _MAX_MESSAGE_CHARS - 3] + "..."


def _parsed(text: str) -> Any:
    try:
        return parse_document(text)
    except (ValueError, RecursionError):
        return None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# -- formats ---------------------------------------------------------------------------------
_RFC3339_TIME = re2.compile(
    r"^([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)
_HOSTNAME_LABELS = re2.compile(
    r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


def _check_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if not _RFC3339_TIME.match(value):
        return False
    time.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00").replace(":60", ":59"))
    return True


def _check_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    date_part, sep, time_part = value.partition("T") if "T" in value else value.partition("t")
    if not sep or not _check_time(time_part):
        return False
    datetime.strptime(date_part, "%Y-%m-%d")
    return True


def _check_uri(value: object) -> bool:
    if not isinstance(value, str):
        return True
    parts = urlsplit(value)
    return bool(parts.scheme) and not any(c.isspace() for c in value)


def _check_hostname(value: object) -> bool:
    if not isinstance(value, str):
        return True
    return 1 <= len(value) <= 253 and bool(_HOSTNAME_LABELS.match(value))


def _check_regex(value: object) -> bool:
    return not isinstance(value, str) or compile_pattern(value) is not None


_FALLBACK_CHECKS = {
    "date-time": _check_date_time,
    "time": _check_time,
    "uri": _check_uri,
    "iri": _check_uri,
    "hostname": _check_hostname,
}
_CHECKERS: dict[type[Any], FormatChecker] = {}


def _format_checker(cls: type[Validator]) -> FormatChecker:
    """The draft's own format checker, plus fallbacks for formats whose extras are missing,
    and `regex` checked by RE2 (the engine the patterns run on)."""
    checker = _CHECKERS.get(cls)
    if checker is None:
        checker = FormatChecker(formats=())
        checker.checkers = dict(cls.FORMAT_CHECKER.checkers)
        for name, check in _FALLBACK_CHECKS.items():
            if name not in checker.checkers:
                checker.checks(name, raises=ValueError)(check)
        if "regex" in checker.checkers:
            checker.checks("regex", raises=re2.error)(_check_regex)
        _CHECKERS[cls] = checker
    return checker


__all__ = [
    "ValidationGuard",
    "ValidationOutcome",
    "parse_document",
    "validate_document",
    "validate_serialized",
    "value_is_valid",
]
