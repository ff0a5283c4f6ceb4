"""JSON values to and from `google.protobuf.Struct`, whose numbers are all doubles."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct


def to_struct(value: Mapping[str, Any]) -> Struct:
    struct = Struct()
    struct.update(value)
    return struct


def from_struct(struct: Struct) -> dict[str, Any]:
    """A plain dict, with whole-number doubles back as ints (`{"maxLength": 5}` stays 5)."""
    value = _integral(json_format.MessageToDict(struct))
    assert isinstance(value, dict)
    return value


def _integral(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value
