"""Hostile uploads and references: refused quickly, before the work they would cause."""

from __future__ import annotations

import gzip
import json
import struct
import tarfile
import time
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from adapters.archive import MAX_EXTENDED_HEADER_BYTES, MAX_EXTENDED_HEADERS_TOTAL
from adapters.errors import AdapterNotFound, AdapterRejected
from adapters.json_input import MAX_JSON_DEPTH, MAX_JSON_FILE_BYTES, read_json_object
from adapters.manifest import MAX_VERSION
from adapters.registry import AdapterRegistry

if TYPE_CHECKING:
    from tests.adapters.conftest import AdapterKit, Snapshot


def _header(kind: bytes, payload: bytes, name: str = "././@PaxHeader") -> bytes:
    """One extended tar header (pax or GNU long name) carrying `payload`."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(payload)
    return info.tobuf(tarfile.USTAR_FORMAT) + payload + b"\0" * (-len(payload) % 512)


def _tar_gz(path: Path, *headers: bytes) -> Path:
    """`headers`, then one small regular file, then the end-of-archive blocks, gzipped."""
    member = tarfile.TarInfo("adapter_config.json")
    member.size = 2
    body = b"".join(headers) + member.tobuf(tarfile.USTAR_FORMAT) + b"{}" + b"\0" * 510
    path.write_bytes(gzip.compress(body + b"\0" * 1024, compresslevel=9))
    return path


def _rejected_quickly(registry: AdapterRegistry, archive: Path, match: str, seconds: float) -> None:
    started = time.perf_counter()
    with pytest.raises(AdapterRejected, match=match):
        registry.register(archive)
    assert time.perf_counter() - started < seconds


# CVE-2024-6232: tarfile's pax regexes backtrack over a long run of digits. A 10 MB header of
# digits gzips to about 10 KB (the 388-byte upload is the same shape, smaller).
def test_a_huge_pax_header_of_the_cve_shape_is_refused_before_it_is_parsed(
    registry: AdapterRegistry, kit: AdapterKit
) -> None:
    archive = _tar_gz(kit.fresh(".tar.gz"), _header(tarfile.XHDTYPE, b"1" * (10 << 20)))
    assert archive.stat().st_size < 16 << 10

    _rejected_quickly(registry, archive, r"extended tar header .* over the limit of 4096", 0.5)


def test_a_global_pax_header_and_a_gnu_long_name_are_bounded_too(
    registry: AdapterRegistry, kit: AdapterKit
) -> None:
    for kind in (tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):
        archive = _tar_gz(kit.fresh(".tar.gz"), _header(kind, b"9" * (1 << 20)))
        _rejected_quickly(registry, archive, "over the limit of 4096", 0.5)


def test_many_pathological_headers_at_the_size_limit_stay_well_under_a_second(
    registry: AdapterRegistry, kit: AdapterKit
) -> None:
    """Each header is at the limit and shaped for the worst backtracking; the total budget
    stops the chain long before it adds up."""
    worst = _header(tarfile.XHDTYPE, b"1" * MAX_EXTENDED_HEADER_BYTES)
    count = 2 * MAX_EXTENDED_HEADERS_TOTAL // MAX_EXTENDED_HEADER_BYTES
    archive = _tar_gz(kit.fresh(".tar.gz"), *[worst] * count)

    _rejected_quickly(registry, archive, "headers .* total more than 32768 bytes", 0.5)


def test_a_chain_of_empty_headers_is_bounded(registry: AdapterRegistry, kit: AdapterKit) -> None:
    archive = _tar_gz(kit.fresh(".tar.gz"), *[_header(tarfile.XHDTYPE, b"")] * 5000)
    _rejected_quickly(registry, archive, "total more than", 0.5)


def test_sparse_members_are_refused(registry: AdapterRegistry, kit: AdapterKit) -> None:
    sparse = tarfile.TarInfo("adapter/adapter_model.safetensors")
    sparse.type = tarfile.GNUTYPE_SPARSE
    old_gnu = _tar_gz(kit.fresh(".tar.gz"), sparse.tobuf(tarfile.GNU_FORMAT))
    pax = b"".join(
        f"{len(record) + len(str(len(record) + 3)) + 1} {record}".encode()
        for record in ("GNU.sparse.major=1\n", "GNU.sparse.minor=0\n")
    )
    pax_sparse = _tar_gz(kit.fresh(".tar.gz"), _header(tarfile.XHDTYPE, pax))
    for archive in (old_gnu, pax_sparse):
        with pytest.raises(AdapterRejected, match="sparse file"):
            registry.register(archive)


def _zip_announcing(path: Path, entries: int, directory_bytes: int, *, zip64: bool) -> Path:
    """A local header's magic, then a bare end of central directory (zip64 records first when
    `zip64`)."""
    data = b"PK\x03\x04" + b"\0" * 26
    if zip64:
        data += struct.pack(
            "<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, entries, entries, directory_bytes, 0
        )
        data += struct.pack("<4sLQL", b"PK\x06\x07", 0, 0, 1)
        entries, directory_bytes = 0xFFFF, 0xFFFFFFFF
    data += struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, entries, entries, directory_bytes, 0, 0)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("zip64", [False, True])
def test_a_zip_is_refused_on_its_end_record_before_the_directory_is_parsed(
    registry: AdapterRegistry, kit: AdapterKit, monkeypatch: pytest.MonkeyPatch, zip64: bool
) -> None:
    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("zipfile.ZipFile parsed the central directory")

    monkeypatch.setattr(zipfile, "ZipFile", never)
    entries = 10**6 if zip64 else 0xFFFE
    many = _zip_announcing(kit.fresh(".zip"), entries, 46 * entries, zip64=zip64)
    with pytest.raises(AdapterRejected, match=f"has {entries} members, over the limit of 8"):
        registry.register(many)
    large = _zip_announcing(kit.fresh(".zip"), 3, 1 << 30, zip64=zip64)
    with pytest.raises(AdapterRejected, match="central directory is 1073741824 bytes"):
        registry.register(large)


def test_a_real_zip_with_a_bloated_central_directory_is_refused(
    registry: AdapterRegistry, kit: AdapterKit
) -> None:
    archive = kit.zip(kit.folder(), extra=[("n" * 9000, b"x")])
    with pytest.raises(AdapterRejected, match=r"central directory is \d+ bytes, over the limit"):
        registry.register(archive)


@pytest.mark.parametrize(
    ("file_name", "field", "value"),
    [
        ("adapter_config.json", "lora_alpha", "NaN"),
        ("adapter_config.json", "lora_alpha", "Infinity"),
        ("adapter_config.json", "lora_dropout", "-Infinity"),
        ("hotswap.json", "training", '{"metrics": {"accuracy": NaN}}'),
        ("hotswap.json", "training", '{"hyperparameters": {"lr": [1, Infinity]}}'),
    ],
)
def test_numbers_that_are_not_finite_are_refused_naming_the_field(
    registry: AdapterRegistry,
    kit: AdapterKit,
    snapshot: Snapshot,
    file_name: str,
    field: str,
    value: str,
) -> None:
    folder = kit.folder()
    path = folder / file_name
    document = json.loads(path.read_text())
    document[field] = "PLACEHOLDER"
    path.write_text(json.dumps(document).replace('"PLACEHOLDER"', value))
    before = snapshot()

    with pytest.raises(AdapterRejected, match=rf"{file_name} has {field}\S*=\S*; numbers must"):
        registry.register(kit.tar_gz(folder))
    assert snapshot() == before


def test_an_alpha_too_large_for_a_float_is_refused(
    registry: AdapterRegistry, kit: AdapterKit
) -> None:
    archive = kit.tar_gz(kit.folder(config={"lora_alpha": 10**400}))
    with pytest.raises(AdapterRejected, match=r"lora_alpha=.*must be a finite number"):
        registry.register(archive)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nests deeper than the limit of 64 levels"),
        (b'{"r": ' + b"9" * 5000 + b"}", "not valid JSON"),
    ],
    ids=["deep", "5000-digit-int"],
)
def test_config_files_are_bounded(
    registry: AdapterRegistry, kit: AdapterKit, content: bytes, message: str
) -> None:
    folder = kit.folder()
    (folder / "adapter_config.json").write_bytes(content)
    with pytest.raises(AdapterRejected, match=message):
        registry.register(kit.tar_gz(folder))


def test_a_json_file_over_the_size_limit_is_refused_before_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "adapter_config.json"
    path.write_bytes(b" " * (MAX_JSON_FILE_BYTES + 1))
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail("read"))
    with pytest.raises(AdapterRejected, match="is 1048577 bytes, over the limit of 1048576"):
        read_json_object(path, "adapter_config.json")


def test_a_manifest_nested_past_the_depth_limit_is_refused(
    registry: AdapterRegistry, kit: AdapterKit
) -> None:
    nested: dict = {"type": "string"}
    for _ in range(MAX_JSON_DEPTH):
        nested = {"type": "array", "items": nested}
    archive = kit.tar_gz(kit.folder(manifest={"training": {"hyperparameters": nested}}))
    with pytest.raises(AdapterRejected, match="nests deeper than the limit of 64 levels"):
        registry.register(archive)


@pytest.mark.parametrize(
    "ref",
    ["intent@0", "intent@2147483648", "intent@" + "9" * 20, "intent@" + "9" * 5001],
    ids=["0", "2^31", "20-digits", "5001-digits"],
)
def test_out_of_range_versions_in_a_reference_are_not_found(
    registry: AdapterRegistry, kit: AdapterKit, ref: str
) -> None:
    registry.register(kit.tar_gz(kit.folder()))
    with pytest.raises(AdapterNotFound, match="from 1 to 2147483647"):
        registry.resolve(ref)


@pytest.mark.parametrize(
    "version", [0, -1, MAX_VERSION + 1, 10**30, 10**5000], ids=["0", "-1", "2^31", "1e30", "1e5000"]
)
def test_out_of_range_versions_are_refused_before_the_database(
    registry: AdapterRegistry, kit: AdapterKit, version: int
) -> None:
    registry.register(kit.tar_gz(kit.folder()))
    for call in (registry.get_version, registry.promote, registry.delete):
        with pytest.raises(AdapterNotFound, match="from 1 to 2147483647"):
            call("intent", version)
    assert registry.resolve("intent@1").version == 1
