"""The hostile requests of issue 18, one table shared by `tests/security` and
`loadtests/bench_hostile.py`: each case is what an attacker sends and what the server must
answer (the 4xx statuses allowed and the words the error message must name).

Payloads that point somewhere (a remote `$ref`, a `file://` `$ref`, a real adapter to
corrupt) take a `Target`: the local listener that counts connections, the secret file whose
marker must never come back, and a real PEFT folder of the base model.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BASE = "SmolLM2-135M-Instruct"
ADMIN_KEY = "security-admin-key"
INFER_KEY = "security-infer-key"
KEYS_ENV = json.dumps({ADMIN_KEY: "admin", INFER_KEY: "infer"})
MB = 1 << 20

# A subject the grammar forces through an `enum`, and a pattern a backtracking engine needs
# 2**40 steps to refuse it with.
EVIL_SUBJECT = "a" * 40 + "!"
BACKTRACKING = "^(a+)+$"
# The pax header of CVE-2024-6232: a run of digits that CPython 3.11.7's `tarfile` scans in
# quadratic time (`re.search(rb"\d+ hdrcharset=...")`); 300,000 digits gzip to ~390 bytes.
PAX_DIGITS = 300_000


@dataclass(frozen=True)
class Target:
    """What hostile payloads point at on the test machine."""

    outside_url: str  # the local listener: every connection to it is a failure
    secret_file: Path  # a JSON Schema holding `marker`: must never be read
    marker: str
    adapter_dir: Path  # a real PEFT LoRA folder of the base model


@dataclass(frozen=True)
class Sent:
    """One HTTP request as it goes on the wire."""

    method: str
    path: str
    key: str | None
    content: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    files: dict[str, tuple[str, bytes, str]] | None = None
    data: dict[str, str] | None = None


Expect = Mapping[int, tuple[str, ...]]


@dataclass(frozen=True)
class HostileCase:
    """A hostile request and the answers allowed: status -> words its message must name."""

    id: str
    issue_class: int
    build: Callable[[Target], Sent]
    expect: Expect
    within_s: float = 5.0  # the answer's deadline; a schema request may generate 3 times


def json_post(path: str, body: Any, key: str | None = INFER_KEY) -> Sent:
    """A JSON POST; `json.dumps` writes NaN and Infinity as JavaScript does, as attackers do."""
    return Sent(
        "POST",
        path,
        key,
        content=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )


def generate(schema: dict[str, Any], text: str = "Answer in JSON.") -> Sent:
    return json_post("/v1/generate", {"input": text, "schema": schema, "max_tokens": 64})


def upload(archive: bytes, name: str, filename: str = "adapter.tar.gz") -> Sent:
    return Sent(
        "POST",
        "/v1/adapters",
        ADMIN_KEY,
        files={"file": (filename, archive, "application/octet-stream")},
        data={"name": name},
    )


# --- schemas (also sent over gRPC) -------------------------------------------------------


def enum_forced_pattern(_: Target) -> dict[str, Any]:
    subject = {"type": "string", "enum": [EVIL_SUBJECT], "pattern": BACKTRACKING}
    return _object({"s": subject})


def pattern_properties(_: Target) -> dict[str, Any]:
    schema = _object({EVIL_SUBJECT: {"type": "integer", "enum": [1]}})
    schema["patternProperties"] = {BACKTRACKING: {"type": "integer"}}
    return schema


def backreference(_: Target) -> dict[str, Any]:
    return _object({"s": {"type": "string", "pattern": r"^(a+)\1$", "maxLength": 8}})


def lookahead(_: Target) -> dict[str, Any]:
    return _object({"s": {"type": "string", "pattern": r"^(?=a)a+$", "maxLength": 8}})


def ref_fanout(keyword: str) -> Callable[[Target], dict[str, Any]]:
    """2**40 subschemas to walk: each level refers twice to the one below; every leaf passes
    (the document is an object), so a validator cannot stop early. `keyword` is one the
    decoder does not enforce (`not`, `allOf`)."""

    def build(_: Target) -> dict[str, Any]:
        defs: dict[str, Any] = {"d0": {"type": "object"}}
        for level in range(1, 41):
            below = {"$ref": f"#/$defs/d{level - 1}"}
            defs[f"d{level}"] = {"allOf": [below, below]}
        schema = _object({"x": {"type": "integer"}})
        schema["$defs"] = defs
        top = {"$ref": "#/$defs/d40"}
        schema[keyword] = top if keyword == "not" else [top]
        return schema

    return build


def http_ref(target: Target) -> dict[str, Any]:
    return _object({"x": {"$ref": f"{target.outside_url}/schema.json"}})


def http_ref_under_not(target: Target) -> dict[str, Any]:
    schema = _object({"x": {"type": "integer"}})
    schema["not"] = {"$ref": f"{target.outside_url}/not.json"}
    return schema


def relative_ref_to_remote_id(target: Target) -> dict[str, Any]:
    schema = _object({"x": {"$ref": "child.json"}})
    schema["$id"] = f"{target.outside_url}/root.json"
    return schema


def file_ref(target: Target) -> dict[str, Any]:
    return _object({"x": {"$ref": target.secret_file.as_uri()}})


def file_ref_in_all_of(target: Target) -> dict[str, Any]:
    schema = _object({"x": {"type": "string"}})
    schema["allOf"] = [{"properties": {"x": {"$ref": target.secret_file.as_uri()}}}]
    return schema


def tiny_multiple_of(_: Target) -> dict[str, Any]:
    return _object({"n": {"type": "number", "multipleOf": 5e-324}})


def huge_min_length(_: Target) -> dict[str, Any]:
    return _object({"s": {"type": "string", "minLength": 2**64}})


def _object(properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


SCHEMAS: dict[str, Callable[[Target], dict[str, Any]]] = {
    "enum-forced-backtracking-pattern": enum_forced_pattern,
    "backtracking-pattern-properties": pattern_properties,
    "backreference-pattern": backreference,
    "lookahead-pattern": lookahead,
    "ref-fanout-under-not": ref_fanout("not"),
    "ref-fanout-under-allOf": ref_fanout("allOf"),
    "http-ref": http_ref,
    "http-ref-under-not": http_ref_under_not,
    "relative-ref-to-remote-id": relative_ref_to_remote_id,
    "file-ref": file_ref,
    "file-ref-in-allOf": file_ref_in_all_of,
    "multipleOf-5e-324": tiny_multiple_of,
    "minLength-2**64": huge_min_length,
}


# --- archives ------------------------------------------------------------------------------


def adapter_files(adapter_dir: Path) -> dict[str, bytes]:
    return {
        name: (adapter_dir / name).read_bytes()
        for name in ("adapter_config.json", "adapter_model.safetensors")
    }


def tar_gz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def pax_bomb(digits: int = PAX_DIGITS) -> bytes:
    """The CVE-2024-6232 shape: one extended (pax) header whose records are a digit run."""
    return _raw_tar_gz(tarfile.XHDTYPE, b"1" * digits)


def gnu_longname_bomb(size: int = 64 * MB) -> bytes:
    """A GNU long-name header announcing (and holding) 64 MB of name."""
    return _raw_tar_gz(tarfile.GNUTYPE_LONGNAME, b"a" * size)


def _raw_tar_gz(kind: bytes, payload: bytes) -> bytes:
    info = tarfile.TarInfo("././@LongHeader")
    info.type = kind
    info.size = len(payload)
    padding = b"\0" * ((-len(payload)) % tarfile.BLOCKSIZE)
    tar = info.tobuf(tarfile.USTAR_FORMAT) + payload + padding + b"\0" * (2 * tarfile.BLOCKSIZE)
    return gzip.compress(tar, 9)


def zip_with_lying_count(target: Target) -> bytes:
    """A real adapter zip whose end-of-central-directory record claims 65,535 members."""
    data = bytearray(zip_bytes(adapter_files(target.adapter_dir)))
    eocd = data.rindex(b"PK\x05\x06")
    data[eocd + 8 : eocd + 12] = b"\xff\xff\xff\xff"  # members on this disk, members in all
    return bytes(data)


def zip_with_many_members(_: Target, members: int = 20_000) -> bytes:
    return zip_bytes({f"f{i}.json": b"{}" for i in range(members)})


def with_config(target: Target, edit: Callable[[str], str]) -> bytes:
    files = adapter_files(target.adapter_dir)
    files["adapter_config.json"] = edit(files["adapter_config.json"].decode()).encode()
    return tar_gz(files)


def nan_lora_alpha(target: Target) -> bytes:
    def edit(text: str) -> str:
        config = json.loads(text)
        config["lora_alpha"] = float("nan")
        return json.dumps(config)

    return with_config(target, edit)


def huge_config(target: Target) -> bytes:
    """adapter_config.json padded with 64 MB of spaces (gzips to ~64 KB)."""
    return with_config(target, lambda text: text[:-1] + " " * (64 * MB) + text[-1:])


def infinite_manifest(target: Target) -> bytes:
    manifest = {"name": "hostile-manifest", "description": "x", "metrics": {"f1": float("inf")}}
    files = adapter_files(target.adapter_dir)
    files["hotswap.json"] = json.dumps(manifest).encode()
    return tar_gz(files)


def deep_manifest(target: Target) -> bytes:
    files = adapter_files(target.adapter_dir)
    files["hotswap.json"] = b'{"name": "deep", "task": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    return tar_gz(files)


# --- the table ----------------------------------------------------------------------------

UNPROCESSABLE = 422
GENERATES_S = 60.0
PROMPT_CHARS = 32 * MB


def _schema_case(schema_id: str, issue_class: int, expect: Expect) -> HostileCase:
    return HostileCase(
        schema_id, issue_class, lambda t: generate(SCHEMAS[schema_id](t)), expect, GENERATES_S
    )


def _upload_case(
    case_id: str, issue_class: int, archive: Callable[[Target], bytes], needles: tuple[str, ...]
) -> HostileCase:
    return HostileCase(
        case_id,
        issue_class,
        lambda t: upload(archive(t), name=f"hostile-{case_id}"),
        expect={UNPROCESSABLE: needles},
    )


def _sampling(**fields: Any) -> Callable[[Target], Sent]:
    body = {"model": BASE, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    return lambda _: json_post("/v1/chat/completions", {**body, **fields})


# The `enum` would force the subject through the pattern; at admission RE2 decides at once
# that no enum value matches it, so the schema is refused (422) before anything is generated.
FORCED_MISMATCH = {UNPROCESSABLE: ("no enum/const value fits",)}
# The document validates: a key the pattern does not match is not constrained by it, and every
# double is a multiple of 5e-324 (2**-1074). The point is a quick answer, not a refusal.
ANSWERED = {200: ()}
REMOTE_REF = {UNPROCESSABLE: ("$ref",)}

HTTP_CASES: list[HostileCase] = [
    # 1. validation that could hang the process
    _schema_case("enum-forced-backtracking-pattern", 1, FORCED_MISMATCH),
    _schema_case("backtracking-pattern-properties", 1, ANSWERED),
    _schema_case("backreference-pattern", 1, {UNPROCESSABLE: ("pattern",)}),
    _schema_case("lookahead-pattern", 1, {UNPROCESSABLE: ("pattern",)}),
    _schema_case("ref-fanout-under-not", 1, {UNPROCESSABLE: ("$ref",)}),
    _schema_case("ref-fanout-under-allOf", 1, {UNPROCESSABLE: ("$ref",)}),
    HostileCase(
        "chat-enum-forced-backtracking-pattern",
        1,
        lambda t: json_post(
            "/v1/chat/completions",
            {
                "model": BASE,
                "messages": [{"role": "user", "content": "Answer in JSON."}],
                "max_tokens": 64,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "evil", "schema": enum_forced_pattern(t)},
                },
            },
        ),
        expect=FORCED_MISMATCH,
        within_s=GENERATES_S,
    ),
    # 2. validation that could reach the network or the file system
    _schema_case("http-ref", 2, REMOTE_REF),
    _schema_case("http-ref-under-not", 2, REMOTE_REF),
    _schema_case("relative-ref-to-remote-id", 2, REMOTE_REF),
    _schema_case("file-ref", 2, REMOTE_REF),
    _schema_case("file-ref-in-allOf", 2, REMOTE_REF),
    # 4. work before limits (the body cap may answer first)
    HostileCase(
        "32MB-prompt",
        4,
        lambda _: json_post("/v1/completions", {"model": BASE, "prompt": "a" * PROMPT_CHARS}),
        expect={413: ("bytes",), UNPROCESSABLE: ("prompt",)},
    ),
    HostileCase(
        "1M-stop-strings",
        4,
        _sampling(stop=["a"] * 1_000_000),
        expect={413: ("bytes",), UNPROCESSABLE: ("stop",)},
    ),
    HostileCase(
        "1MB-prompt",
        4,
        lambda _: json_post("/v1/completions", {"model": BASE, "prompt": "a" * MB}),
        expect={400: ("prompt", "characters")},
    ),
    HostileCase(
        "1MB-chat-message",
        4,
        _sampling(messages=[{"role": "user", "content": "a " * (MB // 2)}]),
        expect={400: ("messages", "characters")},
    ),
    HostileCase(
        "1MB-task-input",
        4,
        lambda _: json_post("/v1/generate", {"adapter": "alpha", "input": "a" * MB}),
        expect={400: ("input", "characters")},
    ),
    HostileCase("5-stop-strings", 4, _sampling(stop=list("abcde")), {UNPROCESSABLE: ("stop",)}),
    HostileCase("long-stop-string", 4, _sampling(stop=["a" * 100_000]), {422: ("stop",)}),
    HostileCase("NaN-temperature", 4, _sampling(temperature=float("nan")), {422: ("temp",)}),
    HostileCase("Infinity-top_p", 4, _sampling(top_p=float("inf")), {422: ("top_p",)}),
    # 5. inputs that used to end in a 500
    HostileCase("seed-2**64", 5, _sampling(seed=2**64), {UNPROCESSABLE: ("seed",)}),
    HostileCase("empty-stop-string", 5, _sampling(stop=[""]), {UNPROCESSABLE: ("stop",)}),
    HostileCase("max_tokens-2**64", 5, _sampling(max_tokens=2**64), {422: ("max_tokens",)}),
    _schema_case("multipleOf-5e-324", 5, ANSWERED),
    _schema_case("minLength-2**64", 5, {UNPROCESSABLE: ("minLength",)}),
    HostileCase(
        "model-at-20-digits",
        5,
        _sampling(model="alpha@" + "9" * 20),
        expect={404: ("alpha@", str(2**31 - 1))},
    ),
    HostileCase(
        "model-at-5001-digits",
        5,
        _sampling(model="alpha@" + "9" * 5001),
        expect={UNPROCESSABLE: ("model",)},
    ),
    HostileCase(
        "version-path-20-digits",
        5,
        lambda _: Sent("GET", "/v1/adapters/alpha/versions/" + "9" * 20, ADMIN_KEY),
        expect={UNPROCESSABLE: ("version", str(2**31 - 1))},
    ),
    HostileCase(
        "promote-version-2**64",
        5,
        lambda _: json_post("/v1/adapters/alpha/promote", {"version": 2**64}, key=ADMIN_KEY),
        expect={UNPROCESSABLE: ("version", str(2**31 - 1))},
    ),
    # 6. archive parsing
    _upload_case("tar-pax-header-CVE-2024-6232", 6, lambda _: pax_bomb(), ("header",)),
    _upload_case("tar-gnu-longname-64MB", 6, lambda _: gnu_longname_bomb(), ("header",)),
    _upload_case("zip-lying-member-count", 6, zip_with_lying_count, ("members",)),
    _upload_case("zip-20000-members", 6, zip_with_many_members, ("members",)),
    # 7. registry poisoning
    _upload_case("NaN-lora_alpha", 7, nan_lora_alpha, ("lora_alpha",)),
    _upload_case("Infinity-in-manifest", 7, infinite_manifest, ("hotswap.json",)),
    _upload_case("64MB-adapter_config", 7, huge_config, ("adapter_config.json",)),
    _upload_case("200000-deep-manifest", 7, deep_manifest, ("hotswap.json",)),
    # the edge: JSON routes take JSON only (a web page's form or text post is refused)
    HostileCase(
        "text-plain-body",
        3,
        lambda _: Sent(
            "POST",
            "/v1/generate",
            INFER_KEY,
            content=b'{"input": "hi"}',
            headers={"content-type": "text/plain"},
        ),
        expect={415: ("application/json",)},
    ),
    HostileCase(
        "form-body",
        3,
        lambda _: Sent(
            "POST",
            "/v1/chat/completions",
            INFER_KEY,
            content=b"model=x",
            headers={"content-type": "application/x-www-form-urlencoded"},
        ),
        expect={415: ("application/json",)},
    ),
]
