"""All server settings in one place, read from `HOTSWAP_*` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from adapters.cpu_reserved_cores import FEW_CORES
from server.auth import Role
from server.structured.limits import SchemaLimits

Dtype = Literal["auto", "bfloat16", "float16", "float32"]
StructuredBackend = Literal["outlines", "xgrammar", "guidance"]


class Settings(BaseSettings):
    """Server configuration. Every field can be set as `HOTSWAP_<FIELD>` in the environment."""

    model_config = SettingsConfigDict(env_prefix="HOTSWAP_", extra="ignore")

    home: Path = Field(
        default=Path("~/.cache/hotswap").expanduser(),
        description="Where the prepared base model and the adapter registry live.",
    )
    database_url: SecretStr | None = Field(
        default=None,
        description="SQLAlchemy URL of the registry's metadata database, e.g. "
        "postgresql://user:password@db:5432/hotswap, shared by every replica; unset: SQLite "
        "in the adapter store folder.",
    )
    adapter_store_dir: Path | None = Field(
        default=None,
        description="Where adapter files (and the default SQLite registry) live; every "
        "replica must read the same folder. Unset: <home>/adapters.",
    )
    base_model: str | None = Field(
        default=None,
        description="A short name (smollm2-135m, gemma3-270m: prepared under <home>/models), a "
        "local HF model folder or a hub id; unset: smollm2-135m (SmolLM2-135M-Instruct).",
    )
    served_model_name: str | None = Field(
        default=None, description="Name of the base model in `model`; defaults to its folder name."
    )
    host: str = Field(default="127.0.0.1", description="HTTP bind address.")
    port: int = Field(default=8000, ge=0, le=65535, description="HTTP port.")
    grpc_port: int = Field(default=50051, ge=0, le=65535, description="gRPC port.")
    grpc_max_message_bytes: int = Field(
        default=4 << 20, ge=1024, description="Largest gRPC message accepted or sent, in bytes."
    )
    max_queued_requests: int = Field(
        default=256, ge=1, description="Requests waiting or running at once; more get 429/503."
    )
    max_n: int = Field(
        default=8,
        ge=1,
        description="Choices one request may ask for (`n`; on completions, `n` times the number "
        "of prompts); each counts against `max_queued_requests`.",
    )
    dtype: Dtype = Field(
        default="auto",
        description=(
            "Weights dtype; `auto` is the model's on GPU and on CPU bfloat16 where the CPU has"
            " bfloat16 instructions, else float32 (`adapters.cpu_dtype`)."
        ),
    )
    max_model_len: int = Field(default=2048, ge=64, description="Context length, in tokens.")
    max_loras: int = Field(default=8, ge=1, description="Adapters batched together at once.")
    max_lora_rank: int = Field(default=16, ge=1, description="Largest LoRA rank accepted.")
    max_cpu_loras: int = Field(default=32, ge=1, description="Adapters kept in host memory (LRU).")
    default_max_tokens: int = Field(
        default=256, ge=1, description="max_tokens of a request that does not set it."
    )
    max_prompt_chars: int | None = Field(
        default=None,
        ge=1,
        description="Longest prompt (text, or all messages' contents) in characters, refused "
        "before it is tokenized; unset: 16 characters per token of max_model_len.",
    )
    max_num_seqs: int = Field(default=64, ge=1, description="Sequences scheduled per step.")
    structured_outputs_backend: StructuredBackend = Field(
        default="outlines", description="Constrained-decoding backend."
    )
    schema_compile_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="CPU seconds a schema may take to compile in the guard's sandbox; more: 422.",
    )
    schema_compile_memory_mb: int = Field(
        default=2048, ge=64, description="Address-space limit of the schema compile sandbox, MB."
    )
    schema_compile_max_waiting: int = Field(
        default=16,
        ge=0,
        description="Schema compilations that may wait for the compile sandbox; more: 429.",
    )
    schema_validation_timeout_s: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="Wall-clock seconds validating one document may take in its sandbox "
        "(the worker is killed and replaced); more: 422.",
    )
    schema_validation_memory_mb: int = Field(
        default=1024, ge=128, description="Address-space limit of the validation sandbox, MB."
    )
    schema_validation_workers: int = Field(
        default=2, ge=1, le=64, description="Worker processes validating documents."
    )
    schema_validation_max_waiting: int = Field(
        default=64,
        ge=0,
        description="Validations that may wait for a validation worker; more: 429.",
    )
    schema_max_grammar_mb: int = Field(
        default=128,
        ge=1,
        description="Largest compiled grammar (serialized token index, MB) a schema may need; "
        "more: 422. The engine holds about 2.2 times this in memory while it is cached "
        "(loadtests/bench_grammar_memory.py).",
    )
    schema_fallback_engine: Literal["guidance", "xgrammar", "none"] = Field(
        default="guidance",
        description="Grammar engine for JSON Schemas outlines cannot compile within the limits "
        "or express (outlines backend only): checked in the compile sandbox, then decoded by "
        "vLLM's llguidance or xgrammar backend for that request; `none`: such schemas get 422.",
    )
    schema_budget_max_grammar_mb: int = Field(
        default=64,
        ge=0,
        description="Largest grammar (serialized token index, MB) decoded budget-aware: a "
        "max_tokens below the schema's longest document is honoured (the document is closed "
        "within it) for grammars up to this size; larger ones need the longest document's "
        "budget (0: never). The engine holds a table about the index's size per such grammar.",
    )
    grammar_cache_mb: int = Field(
        default=512,
        ge=1,
        description="Compiled grammars the engine keeps for reuse, in MB of serialized index "
        "(least recently used evicted first); replaces vLLM's cache of 128 of any size.",
    )
    schema_limits: SchemaLimits = Field(
        default_factory=SchemaLimits,
        description="Caps bounding a schema's open parts (JSON); user bounds are never tightened.",
    )
    schema_max_retries: int = Field(
        default=2,
        ge=0,
        description="Extra attempts when a document fails its schema (unenforced keywords).",
    )
    schema_vocab_cache_dir: Path | None = Field(
        default=None,
        description="Where the guard caches the tokenizer vocabulary; unset: "
        "~/.cache/hotswap/structured (shared by every home).",
    )
    engine_schema_compile_timeout_s: int = Field(
        default=60,
        ge=1,
        description="The engine's own compile timeout (VLLM_REGEX_COMPILATION_TIMEOUT_S), well "
        "above the guard's: a schema the guard accepted must not time out under load.",
    )
    kv_cache_space_gib: int = Field(
        default=2, ge=1, description="KV cache size on CPU (VLLM_CPU_KVCACHE_SPACE), in GiB."
    )
    fast_cpu_lora: bool = Field(
        default=True, description="Use hotswap's segment-grouped LoRA kernels on CPU."
    )
    cpu_reserved_cores: int | None = Field(
        default=None,
        ge=0,
        description="CPU cores vLLM's worker leaves to the other processes (its scheduler, the "
        "API) instead of running the model's threads on them (VLLM_CPU_NUM_OF_RESERVED_CPU); "
        f"unset: none on a machine of up to {FEW_CORES} cores, where one is a large share of "
        "the compute, unless VLLM_CPU_NUM_OF_RESERVED_CPU is set; else vLLM's own (one).",
    )
    drift_window_size: int = Field(
        default=200, ge=10, description="Labelled responses per adapter in the drift window."
    )
    seed: int = Field(default=0, description="Engine seed (requests may set their own).")
    shutdown_grace_s: float = Field(
        default=30.0, ge=0, description="How long in-flight requests may run on shutdown."
    )
    engine_check_interval_s: float = Field(
        default=0.5, gt=0, description="How often the supervisor checks that the engine core runs."
    )
    engine_restart_attempts: int = Field(
        default=3,
        ge=1,
        description="Restarts tried in a row after the engine core dies; then it stays not ready.",
    )
    engine_restart_delay_s: float = Field(
        default=10.0, ge=0, description="Pause between two failed engine restarts."
    )
    adapters: dict[str, Path] = Field(
        default_factory=dict,
        description="PEFT LoRA folders registered (and promoted if new) at start, NAME -> PATH.",
    )
    api_keys: dict[str, Role] = Field(
        default_factory=dict,
        description='API keys and their roles as JSON, e.g. {"k1": "admin", "k2": "infer"}.',
    )
    api_keys_file: Path | None = Field(
        default=None, description="A JSON file of API keys and roles, read at start."
    )
    max_upload_bytes: int = Field(
        default=1 << 30, ge=1, description="Largest adapter archive accepted, in bytes."
    )
    max_request_bytes: int = Field(
        default=4 << 20,
        ge=1024,
        description="Largest body of a JSON request, in bytes (the gRPC message limit's "
        "default); more: 413 while it streams, before it is parsed.",
    )
    public_metrics: bool = Field(
        default=False,
        description="Serve /metrics (and the Ray replicas' metrics) without a key when API keys "
        "are set; off: any key may read them.",
    )
    public_docs: bool = Field(
        default=False,
        description="Serve /openapi.json, /docs, /redoc and gRPC reflection without a key when "
        "API keys are set; off: any key may read them.",
    )
    ray_replicas: int = Field(
        default=2, ge=1, description="Engine replicas of the Ray Serve application (`--ray`)."
    )
    ray_cpus_per_replica: float = Field(
        default=1.0, ge=0, description="Ray CPUs reserved by each engine replica."
    )
    ray_gpus_per_replica: float | None = Field(
        default=None,
        ge=0,
        description="Ray GPUs per engine replica; unset: 1 when the Ray cluster has GPUs, else 0.",
    )
    ray_metrics_dir: Path | None = Field(
        default=None,
        description="Where each engine replica writes its scrape address for Prometheus "
        "(file_sd_configs); unset: <home>/ray/metrics-targets.",
    )

    def schema_fallback(self) -> Literal["guidance", "xgrammar"] | None:
        """The fallback grammar engine in effect: only beside the outlines backend."""
        if self.structured_outputs_backend != "outlines" or self.schema_fallback_engine == "none":
            return None
        return self.schema_fallback_engine
