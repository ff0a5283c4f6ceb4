"""Refuse schemas holding numbers that overflow: non-finite, or beyond the 64-bit float range.

Checked before anything else reads the schema's numbers (the meta-schema check included):
Python cannot print an integer of more than 4300 digits, nor turn one above 1.8e308 into a
float, so such a number would end in a 500 wherever it is compared, printed or bounded.
"""

from __future__ import annotations

import math
import sys
from typing import Any

from server.structured.errors import RefusalReason, SchemaRefusedError

_FLOAT_MAX = sys.float_info.max


def check_numbers(root: Any) -> None:
    """Raise `SchemaRefusedError` unless every number in `root` is finite and within the
    64-bit float range (walked without recursion)."""
    stack: list[Any] = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, float) and not math.isfinite(node):
            _refuse(f"the number {node}")
        elif isinstance(node, int) and not isinstance(node, bool) and abs(node) > _FLOAT_MAX:
            _refuse(f"an integer of about {int(node.bit_length() * math.log10(2)) + 1} digits")


def _refuse(shown: str) -> None:
    raise SchemaRefusedError(
        RefusalReason.INVALID_SCHEMA,
        f"the schema holds {shown}; numbers must be finite and within the 64-bit float range "
        "(about 1.8e308)",
    )


__all__ = ["check_numbers"]
