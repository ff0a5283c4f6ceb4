"""Fuzzing helpers: every route of a live OpenAPI schema driven by schemathesis within a time
budget, and hypothesis strategies of malformed adapter archives."""

from __future__ import annotations

import contextlib
import gzip
import io
import tarfile
import time
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.core.result import Err, Ok

# Generating routes run on the real engine: a few tokens are enough to exercise them.
GENERATING = {"/v1/generate", "/v1/chat/completions", "/v1/completions"}
FUZZ_MAX_TOKENS = 4


@dataclass
class FuzzReport:
    """What a fuzz run sent: calls per operation, and any answer that was a 5xx."""

    calls: dict[str, int] = field(default_factory=dict)
    server_errors: list[str] = field(default_factory=list)


def fuzz_openapi(
    raw_schema: dict[str, Any],
    base_url: str,
    headers: dict[str, str],
    budget_s: float,
    examples: int,
) -> FuzzReport:
    """Valid and invalid requests to every operation of `raw_schema`, `examples` each per
    mode, until `budget_s` runs out; each answer is checked with `not_a_server_error`."""
    schema = schemathesis.openapi.from_dict(raw_schema)
    operations = [_operation(result) for result in schema.get_all_operations()]
    report = FuzzReport()
    deadline = time.monotonic() + budget_s
    runs = [(op, mode) for mode in GenerationMode for op in operations]
    for index, (operation, mode) in enumerate(runs):
        share = (deadline - time.monotonic()) / (len(runs) - index)
        if share <= 0:
            break
        _fuzz_operation(operation, mode, base_url, headers, examples, share, report)
    return report


def _operation(result: Ok[Any] | Err[Any]) -> Any:
    if isinstance(result, Err):
        raise result.err()  # the server's own schema does not load: a failure in itself
    return result.ok()


def _fuzz_operation(
    operation: Any,
    mode: GenerationMode,
    base_url: str,
    headers: dict[str, str],
    examples: int,
    budget_s: float,
    report: FuzzReport,
) -> None:
    label = f"{mode.value} {operation.label}"
    stop_at = time.monotonic() + budget_s

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        if time.monotonic() > stop_at:
            return
        _bound_generation(case)
        response = case.call(base_url=base_url, headers=headers, timeout=120)
        report.calls[label] = report.calls.get(label, 0) + 1
        try:
            case.validate_response(response, checks=[not_a_server_error])
        except (Failure, FailureGroup) as failure:
            report.server_errors.append(f"{label}: {response.status_code} {failure}"[:2000])

    with contextlib.suppress(Unsatisfiable):  # nothing invalid to send (no parameters)
        run()


def _bound_generation(case: Any) -> None:
    """At most `FUZZ_MAX_TOKENS` tokens per generating call (fuzzing is about the input)."""
    if case.operation.path in GENERATING and isinstance(case.body, dict):
        for name in ("max_tokens", "max_completion_tokens"):
            value = case.body.get(name)
            if value is None or (isinstance(value, int) and value > FUZZ_MAX_TOKENS):
                case.body[name] = FUZZ_MAX_TOKENS


# --- malformed archives -------------------------------------------------------------------

HOSTILE_NAMES = [
    "adapter_config.json",
    "adapter_model.safetensors",
    "hotswap.json",
    "../escape.json",
    "/abs/adapter_config.json",
    "a\\b.json",
    "model.bin",
    "weights.pkl",
    "dir/",
    "dir/adapter_config.json",
    "__MACOSX/x",
    "",
    ".",
    "x" * 300,
]
TAR_TYPES = [
    tarfile.REGTYPE,
    tarfile.DIRTYPE,
    tarfile.SYMTYPE,
    tarfile.LNKTYPE,
    tarfile.FIFOTYPE,
    tarfile.CHRTYPE,
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_SPARSE,
]


def _tar_bytes(members: list[tuple[str, bytes, bytes]]) -> bytes:
    buffer = io.BytesIO()
    for name, kind, data in members:
        info = tarfile.TarInfo(name[:100])
        info.type = kind
        info.size = len(data)
        info.linkname = "../../etc/passwd" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
        buffer.write(info.tobuf(tarfile.USTAR_FORMAT))
        buffer.write(data + b"\0" * ((-len(data)) % tarfile.BLOCKSIZE))
    buffer.write(b"\0" * (2 * tarfile.BLOCKSIZE))
    return buffer.getvalue()


def _zip_bytes(members: list[tuple[str, bytes, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        warnings.simplefilter("ignore", UserWarning)  # duplicate names are on purpose
        for name, _, data in members:
            archive.writestr(name or "empty", data)
    return buffer.getvalue()


def _patched(data: bytes, patches: list[tuple[int, bytes]], cut: int | None) -> bytes:
    out = bytearray(data)
    for position, patch in patches:
        at = position % max(1, len(out))
        out[at : at + len(patch)] = patch
    return bytes(out[:cut] if cut is not None else out)


def malformed_archives(real_files: dict[str, bytes]) -> st.SearchStrategy[tuple[str, bytes]]:
    """(kind, bytes) of uploads that are almost adapters: hostile member lists and types, or
    a real adapter's tar or zip with bytes overwritten (headers first) and maybe cut short."""
    payload = st.one_of(
        st.sampled_from(list(real_files.values())),
        st.binary(max_size=256),
        st.sampled_from([b"{}", b'{"r": NaN}', b'{"r": 1e999}', b"[" * 5000, b"\xff\xfe"]),
    )
    member = st.tuples(st.sampled_from(HOSTILE_NAMES), st.sampled_from(TAR_TYPES), payload)
    members = st.lists(member, min_size=1, max_size=6)
    real = [(name, tarfile.REGTYPE, data) for name, data in real_files.items()]
    patch = st.tuples(
        st.one_of(st.integers(0, 1535), st.integers(-2048, -1)), st.binary(min_size=1, max_size=8)
    )
    patches = st.lists(patch, min_size=1, max_size=6)
    cut = st.none() | st.integers(0, 4096)

    def tar_gz(chosen: list[tuple[str, bytes, bytes]]) -> tuple[str, bytes]:
        return "members.tar.gz", gzip.compress(_tar_bytes(chosen), 1)

    def zip_of(chosen: list[tuple[str, bytes, bytes]]) -> tuple[str, bytes]:
        return "members.zip", _zip_bytes(chosen)

    def patched(build: Callable[[list[Any]], bytes], gz: bool) -> st.SearchStrategy[Any]:
        data = build(real)
        return st.builds(
            lambda p, c: (
                "patched",
                gzip.compress(_patched(data, p, c), 1) if gz else _patched(data, p, c),
            ),
            patches,
            cut,
        )

    return st.one_of(
        members.map(tar_gz),
        members.map(zip_of),
        patched(_tar_bytes, gz=True),
        patched(_zip_bytes, gz=False),
    )
