"""JSON that comes from outside (an uploaded archive, a stored manifest): bounded in size and
depth, and every number finite.

Python's `json` reads `NaN`, `Infinity` and `-Infinity`, which JSON does not allow and which
would poison what is computed from them (a LoRA scale, a drift baseline); they are refused
with the path of the field that holds them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from adapters.errors import AdapterRejected

MAX_JSON_FILE_BYTES = 1 << 20
MAX_JSON_DEPTH = 64


def read_json_object(path: Path, label: str) -> dict[str, Any]:
    """The JSON object in the file at `path` (`label` names it in messages). Raises
    AdapterRejected when the file is over MAX_JSON_FILE_BYTES (checked before reading), is
    not a JSON object, nests deeper than MAX_JSON_DEPTH or holds a number that is not finite."""
    size = path.stat().st_size
    if size > MAX_JSON_FILE_BYTES:
        raise AdapterRejected(
            f"{label} is {size} bytes, over the limit of {MAX_JSON_FILE_BYTES} bytes"
        )
    try:
        value = json.loads(path.read_bytes())
    except RecursionError:
        raise AdapterRejected(
            f"{label} nests deeper than the limit of {MAX_JSON_DEPTH} levels"
        ) from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an over-long integer
        raise AdapterRejected(f"{label} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise AdapterRejected(f"{label} must be a JSON object")
    problem = json_problem(value)
    if problem is not None:
        raise AdapterRejected(f"{label} {problem}")
    return value


def json_problem(value: Any) -> str | None:
    """Why parsed JSON `value` is refused (a number that is not finite, nesting deeper than
    MAX_JSON_DEPTH), naming the field's path; None when it is fine."""
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        item, where, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return f"nests deeper than the limit of {MAX_JSON_DEPTH} levels at {where}"
        if isinstance(item, float) and not math.isfinite(item):
            return (
                f"has {where or 'a value'}={json.dumps(item)}; numbers must be finite "
                "(NaN and Infinity are refused)"
            )
        if isinstance(item, dict):
            prefix = f"{where}." if where else ""
            stack.extend((v, f"{prefix}{k}", depth + 1) for k, v in item.items())
        elif isinstance(item, list | tuple):
            stack.extend((v, f"{where}[{i}]", depth + 1) for i, v in enumerate(item))
    return None
