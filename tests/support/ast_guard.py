"""One thread at a time in `ast.parse`, for the test process.

CPython 3.11 keeps the AST converter's recursion counter in interpreter-wide state
(`PyAST_mod2obj` in Python/Python-ast.c): when a garbage collection inside one thread's parse
runs Python code, another thread may parse meanwhile, and the first ends with
`SystemError: AST constructor recursion depth mismatch`. Hypothesis parses thousands of times
in a fuzz run (its filter and lambda reflection), and CI met the error there; which other
thread parsed meanwhile is not known (formatting a traceback parses, for one). A lock around
`ast.parse` closes the race whoever the other party is.
"""

from __future__ import annotations

import ast
import functools
import threading
from typing import Any

_PARSING = threading.RLock()  # re-entrant: a collection mid-parse may run code that parses


def serialize_ast_parse() -> None:
    """Wrap `ast.parse` in a process-wide lock (once; later calls change nothing)."""
    if getattr(ast.parse, "__serialized__", False):
        return
    unguarded = ast.parse

    @functools.wraps(unguarded)
    def parse(*args: Any, **kwargs: Any) -> Any:
        with _PARSING:
            return unguarded(*args, **kwargs)

    parse.__serialized__ = True  # type: ignore[attr-defined]
    ast.parse = parse
