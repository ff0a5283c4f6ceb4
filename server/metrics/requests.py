"""Per-request measurements: outcome, latency, time to first token, time per output token."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from server.metrics import instruments as m


@dataclass
class RequestRecorder:
    """Follows one request from admission to its end and records it once."""

    adapter: str
    version: str
    protocol: str
    route: str
    started: float = field(default_factory=time.perf_counter)
    _first_token_at: float | None = None

    def __post_init__(self) -> None:
        m.REQUESTS_IN_FLIGHT.inc()

    def token(self, completion_tokens: int) -> None:
        """Called per engine step with the tokens produced so far."""
        if self._first_token_at is None and completion_tokens > 0:
            self._first_token_at = time.perf_counter()
            m.TTFT_SECONDS.labels(self.adapter, self.protocol).observe(
                self._first_token_at - self.started
            )

    def finish(self, status: str, prompt_tokens: int, completion_tokens: int) -> None:
        """The request ended: `status` is `ok`, `aborted` or an error code."""
        now = time.perf_counter()
        m.REQUESTS_IN_FLIGHT.dec()
        m.REQUESTS.labels(self.adapter, self.version, self.protocol, self.route, status).inc()
        m.REQUEST_SECONDS.labels(self.adapter, self.protocol, self.route).observe(
            now - self.started
        )
        m.PROMPT_TOKENS.labels(self.adapter, self.protocol).inc(prompt_tokens)
        m.COMPLETION_TOKENS.labels(self.adapter, self.protocol).inc(completion_tokens)
        if status == "aborted":
            m.REQUESTS_ABORTED.labels(self.adapter, self.protocol).inc()
        if self._first_token_at is not None and completion_tokens > 1:
            m.TPOT_SECONDS.labels(self.adapter, self.protocol).observe(
                (now - self._first_token_at) / (completion_tokens - 1)
            )


def record_refusal(adapter: str, protocol: str, route: str, status: str) -> None:
    """A request refused before it reached the engine (bad input, unknown model, full queue)."""
    m.REQUESTS.labels(adapter, "", protocol, route, status).inc()
