"""The test process's `ast.parse` is safe from two threads at once (tests/support/ast_guard.py):
a parse whose garbage collection runs Python code, while another thread parses, raises no
SystemError."""

from __future__ import annotations

import ast
import sys
import threading
import time
from collections.abc import Iterator

import pytest

SOURCE = "\n".join(
    f"def f{i}(a, b=lambda x: x + {i}):\n    return [a * b] if a else {{}}" for i in range(100)
)
RACE_S = 1.5


class _Cycle:
    """Garbage only a collection frees, whose finalizer runs bytecode (a point where the
    interpreter may hand over to another thread)."""

    def __init__(self) -> None:
        self.me = self

    def __del__(self) -> None:
        sum(range(500))


@pytest.fixture
def quick_switches() -> Iterator[None]:
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(interval)


def test_two_threads_parse_at_once_without_a_system_error(quick_switches: None) -> None:
    errors: list[SystemError] = []
    stop = threading.Event()

    def parse_small() -> None:
        while not stop.is_set():
            try:
                ast.parse("x = (1 + 2) * y")
            except SystemError as exc:
                errors.append(exc)

    other = threading.Thread(target=parse_small, daemon=True)
    other.start()
    parses = 0
    deadline = time.monotonic() + RACE_S
    try:
        while time.monotonic() < deadline:
            for _ in range(50):
                _Cycle()
            try:
                ast.parse(SOURCE)
            except SystemError as exc:
                errors.append(exc)
            parses += 1
    finally:
        stop.set()
        other.join()
    assert parses > 10
    assert not errors, errors[:3]
