"""The benchmarks' closed loop (loadtests/workload.py): every call sent once, never more than
`concurrency` at a time, each client sending its next call when its last one ended."""

from __future__ import annotations

import asyncio
from collections import Counter

from loadtests.workload import Call, Streamed, closed_loop, request_mix


def test_every_call_is_sent_once_with_at_most_concurrency_in_flight() -> None:
    calls = request_mix(["base", "a", "b"], ["p1", "p2", "p3", "p4"], 20)
    sent: list[Call] = []
    in_flight = 0
    most = 0

    async def send(call: Call) -> Streamed:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.001)
        sent.append(call)
        in_flight -= 1
        return Streamed(ttft_s=0.001, latency_s=0.001, completion_tokens=3)

    result = asyncio.run(closed_loop(calls, 4, send))
    assert Counter(sent) == Counter(calls)
    assert most == 4
    assert len(result.requests) == 20 and result.tokens_per_s > 0
    assert sum(r.completion_tokens for r in result.requests) == 60
