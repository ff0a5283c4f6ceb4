"""Every hotswap_* Prometheus metric, defined once. Labels stay bounded: adapter names come
from the registry (unknown names are counted as `unknown`), never request text or ids."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

UNKNOWN_ADAPTER = "unknown"

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TOKEN_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)

REQUESTS = Counter(
    "hotswap_requests_total",
    "Inference requests by adapter, version, protocol, route and outcome.",
    ["adapter", "version", "protocol", "route", "status"],
)
REQUESTS_IN_FLIGHT = Gauge(
    "hotswap_requests_in_flight", "Inference requests running in the engine now."
)
REQUESTS_ABORTED = Counter(
    "hotswap_requests_aborted_total",
    "Requests stopped before the end (client gone, deadline, cancel).",
    ["adapter", "protocol"],
)
REQUEST_SECONDS = Histogram(
    "hotswap_request_duration_seconds",
    "End-to-end time of an inference request in the engine.",
    ["adapter", "protocol", "route"],
    buckets=_LATENCY_BUCKETS,
)
TTFT_SECONDS = Histogram(
    "hotswap_time_to_first_token_seconds",
    "Time from a request's start to its first output token.",
    ["adapter", "protocol"],
    buckets=_LATENCY_BUCKETS,
)
TPOT_SECONDS = Histogram(
    "hotswap_time_per_output_token_seconds",
    "Mean time per output token after the first, per request.",
    ["adapter", "protocol"],
    buckets=_TOKEN_LATENCY_BUCKETS,
)
PROMPT_TOKENS = Counter(
    "hotswap_prompt_tokens_total", "Prompt tokens processed.", ["adapter", "protocol"]
)
COMPLETION_TOKENS = Counter(
    "hotswap_completion_tokens_total", "Output tokens generated.", ["adapter", "protocol"]
)
SCHEMA_OUTCOMES = Counter(
    "hotswap_schema_outcomes_total",
    "Requests with a JSON Schema by outcome: valid, invalid, retried, refused (before "
    "generation). Validity rate: valid / (valid + invalid).",
    ["adapter", "outcome"],
)
SCHEMA_ENGINES = Counter(
    "hotswap_schema_engine_requests_total",
    "Requests with a JSON Schema sent to the engine, by the grammar engine that decodes them: "
    "outlines, or the fallback (guidance, xgrammar) for schemas outlines cannot compile.",
    ["adapter", "engine"],
)
LABELS = Counter(
    "hotswap_labels_total",
    "Labels produced per adapter, one series per label of its manifest plus __other__.",
    ["adapter", "label"],
)
LABEL_CONFIDENCE = Histogram(
    "hotswap_label_confidence",
    "Calibrated probability of the answered label, per classification task call.",
    ["adapter", "version"],
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0),
)
LABEL_VERDICTS = Counter(
    "hotswap_label_verdicts_total",
    "Classification task calls by verdict: answered, or abstained (confidence below the "
    "threshold). Abstain rate: abstained / all.",
    ["adapter", "version", "verdict"],
)
ADAPTER_LOADS = Counter(
    "hotswap_adapter_loads_total",
    "Adapter versions loaded into the engine (promotions, rollbacks, uploads, start-up).",
    ["adapter"],
)
ADAPTER_LOAD_SECONDS = Histogram(
    "hotswap_adapter_load_seconds",
    "Time to load an adapter version into the engine and serve its first token.",
    ["adapter"],
    buckets=_LATENCY_BUCKETS,
)
ADAPTER_COLD_LOADS = Counter(
    "hotswap_adapter_cold_loads_total",
    "Requests whose adapter was not held by the engine and was loaded from disk first.",
    ["adapter"],
)
ADAPTER_SWAPS = Counter(
    "hotswap_adapter_swaps_total",
    "Changes of the version an adapter name serves.",
    ["adapter", "kind"],
)
ADAPTERS_LOADED = Gauge(
    "hotswap_adapters_loaded", "Adapter versions the engine holds (GPU/CPU slots and cache)."
)
ENGINE_RESTARTS = Counter(
    "hotswap_engine_restarts_total",
    "Restarts of the engine after its core process died, by outcome: ok (serving again, "
    "adapters reloaded) or failed (another attempt follows, or the server stays not ready).",
    ["outcome"],
)
ROLLOUT_STATE = Gauge(
    "hotswap_rollout_state",
    "1 for the state of the adapter's latest rollout this process saw (active, promoted, "
    "rolled_back, aborted), 0 for the others.",
    ["adapter", "state"],
)
ROLLOUT_CANARY_PERCENT = Gauge(
    "hotswap_rollout_canary_percent",
    "Share of the adapter's requests its active canary sends to the candidate (0: shadow).",
    ["adapter"],
)
ROLLOUT_REQUESTS = Counter(
    "hotswap_rollout_requests_total",
    "Answers under a rollout per version and role (candidate, current), by outcome: valid, "
    "invalid (schema), unchecked (no schema) or error. Validity: valid / (valid + invalid).",
    ["adapter", "version", "role", "outcome"],
)
ROLLOUT_LATENCY_SECONDS = Histogram(
    "hotswap_rollout_latency_seconds",
    "Time of an answer under a rollout, per version and role (candidate, current).",
    ["adapter", "version", "role"],
    buckets=_LATENCY_BUCKETS,
)
ROLLOUT_COMPARISON = Gauge(
    "hotswap_rollout_comparison",
    "The figures the gates judge, candidate against current over the rollout so far: "
    "candidate_validity, current_validity, validity_drop, label_js_distance, "
    "shadow_agreement, candidate_p95_seconds, current_p95_seconds, p95_latency_ratio, "
    "candidate_error_rate.",
    ["adapter", "figure"],
)
ROLLOUT_DECISIONS = Counter(
    "hotswap_rollout_decisions_total",
    "Rollouts ended, by outcome (promoted, rolled_back, aborted) and by whom (gates, manual).",
    ["adapter", "outcome", "by"],
)
ROLLOUT_SHADOW_DROPPED = Counter(
    "hotswap_rollout_shadow_dropped_total",
    "Shadow copies not run because the engine queue was long (or too many ran already).",
    ["adapter"],
)
