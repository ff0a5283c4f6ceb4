"""The checked-in stubs in server/grpc_api/gen/ are what the .proto files in proto/ produce."""

from __future__ import annotations

import filecmp
from pathlib import Path

from server.grpc_api.codegen import GEN_DIR, generate


def test_checked_in_stubs_match_the_proto_files(tmp_path: Path) -> None:
    fresh = generate(tmp_path / "gen")
    checked_in = sorted(
        p.relative_to(GEN_DIR)
        for p in GEN_DIR.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )
    assert checked_in == fresh, "regenerate: python -m server.grpc_api.codegen"
    differing = [
        str(path)
        for path in fresh
        if not filecmp.cmp(tmp_path / "gen" / path, GEN_DIR / path, shallow=False)
    ]
    assert not differing, f"stale stubs {differing}; regenerate: python -m server.grpc_api.codegen"


def test_generated_modules_import_as_a_package() -> None:
    from server.grpc_api.gen.hotswap.v1 import adapters_pb2_grpc, inference_pb2_grpc

    assert callable(inference_pb2_grpc.InferenceStub) and callable(adapters_pb2_grpc.AdaptersStub)
