"""Which version answers a request of a name under a canary: a pure function of its id."""

from __future__ import annotations

import hashlib

BUCKETS = 10_000
"""Requests fall in buckets 0..9999; a canary of p % takes the first p * 100 of them."""


def bucket(routing_key: str) -> int:
    """The request's bucket: the first 8 bytes of sha256(key) modulo `BUCKETS`. The same on
    every replica and across restarts (unlike `hash()`), so a retried request with the same
    id gets the same version."""
    digest = hashlib.sha256(routing_key.encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def takes_candidate(routing_key: str, percent: float) -> bool:
    """Whether a canary of `percent` % answers this request with the candidate."""
    return bucket(routing_key) < round(percent * BUCKETS / 100)
