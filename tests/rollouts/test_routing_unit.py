"""Canary routing: a pure, stable function of the request id."""

from __future__ import annotations

import hashlib

import pytest

from server.rollouts.routing import BUCKETS, bucket, takes_candidate


def test_the_bucket_is_sha256_of_the_id_and_stable() -> None:
    expected = int.from_bytes(hashlib.sha256(b"req-42").digest()[:8], "big") % BUCKETS
    assert bucket("req-42") == expected
    assert [bucket("req-42") for _ in range(5)] == [expected] * 5


@pytest.mark.parametrize("percent", [1.0, 25.0, 50.0, 90.0])
def test_a_canary_takes_its_share_of_requests(percent: float) -> None:
    ids = [f"id-{i}" for i in range(20_000)]
    share = sum(takes_candidate(i, percent) for i in ids) / len(ids) * 100
    assert abs(share - percent) < 1.0, share


def test_a_retry_with_the_same_id_gets_the_same_version_and_shares_nest() -> None:
    ids = [f"retry-{i}" for i in range(2_000)]
    first = [takes_candidate(i, 25.0) for i in ids]
    assert [takes_candidate(i, 25.0) for i in ids] == first
    # raising the share only adds requests to the candidate, it never moves one back
    assert all(takes_candidate(i, 50.0) for i, taken in zip(ids, first, strict=True) if taken)


def test_fractional_percents_use_hundredths() -> None:
    assert takes_candidate("x", 0.01) == (bucket("x") < 1)
    assert not any(takes_candidate(f"id-{i}", 0.0) for i in range(1_000))
    assert all(takes_candidate(f"id-{i}", 100.0) for i in range(1_000))
