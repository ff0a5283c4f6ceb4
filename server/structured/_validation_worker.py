"""Validation worker: a child process that validates documents with `validate_document`.

Started by `ValidationGuard` as `python -m server.structured._validation_worker MEMORY_MB
PARENT_PID` (the protocol of `server.structured.workers`): for each request
`{"id": N, "schema": "<schema JSON>", "text": "<document>", "max_errors": M}` it answers
`{"id": N, "valid": ..., "errors": [...]}`. Its address space is capped and it dies with its
parent, so a runaway validation can only kill this process.
"""

from __future__ import annotations

import sys
from typing import Any

from server.structured.workers import sandbox, serve


def main(argv: list[str]) -> int:
    sandbox(argv)
    from server.structured.validation import validate_serialized

    def handle(request: dict[str, Any]) -> dict[str, Any]:
        outcome = validate_serialized(request["schema"], request["text"], request["max_errors"])
        return {"valid": outcome.valid, "errors": list(outcome.errors)}

    return serve(handle, {})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
