"""Every bad upload is refused with a message naming its problem, and changes nothing on disk."""

from __future__ import annotations

import os
import stat
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from adapters.errors import AdapterRejected
from adapters.registry import AdapterRegistry

if TYPE_CHECKING:
    from tests.adapters.conftest import AdapterKit, Snapshot

# how a case makes its upload: the archive, written with the kit
Build = Callable[["AdapterKit"], Path]


def member(
    name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"x", link: str = ""
) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data if kind == tarfile.REGTYPE else None


def zip_special(name: str, kind: int) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.external_attr = (kind | 0o777) << 16
    return info, b"/etc/passwd"


def without(file_name: str) -> Build:
    def build(kit: AdapterKit) -> Path:
        folder = kit.folder()
        (folder / file_name).unlink()
        return kit.tar_gz(folder)

    return build


def overwritten(file_name: str, content: bytes) -> Build:
    def build(kit: AdapterKit) -> Path:
        folder = kit.folder()
        (folder / file_name).write_bytes(content)
        return kit.tar_gz(folder)

    return build


def tensors_changed(change: Callable[[AdapterKit, dict[str, np.ndarray]], object]) -> Build:
    def build(kit: AdapterKit) -> Path:
        tensors = kit.tensors()
        change(kit, tensors)
        return kit.tar_gz(kit.folder(tensors=tensors))

    return build


def task(**fields: Any) -> dict[str, Any]:
    return {
        "task": {
            "labels": ["buy", "sell"],
            "label_field": "intent",
            "output_schema": {"type": "object", "properties": {"intent": {"type": "string"}}},
            **fields,
        }
    }


def raw_file(content: bytes) -> Build:
    def build(kit: AdapterKit) -> Path:
        path = kit.fresh(".tar.gz")
        path.write_bytes(content)
        return path

    return build


def truncated_tar_gz(kit: AdapterKit) -> Path:
    archive = kit.tar_gz(kit.folder())
    archive.write_bytes(archive.read_bytes()[:300])
    return archive


def truncated_tar(kit: AdapterKit) -> Path:
    archive = kit.tar(kit.folder())
    archive.write_bytes(archive.read_bytes()[:1000])
    return archive


def q_name(layer: int, half: str) -> str:
    return f"base_model.model.model.layers.{layer}.self_attn.q_proj.lora_{half}.weight"


CASES = [
    # archive shape and members
    (
        "pickle-weights",
        lambda k: k.tar_gz(k.folder(), extra=[member("adapter/adapter_model.bin")]),
        "'adapter/adapter_model.bin' is a pickle file; only safetensors weights are accepted",
    ),
    (
        "dotdot-path",
        lambda k: k.tar_gz(k.folder(), extra=[member("../evil")]),
        r"'\.\.' in its path",
    ),
    (
        "dotdot-path-zip",
        lambda k: k.zip(k.folder(), extra=[("a/../../evil", b"x")]),
        r"'\.\.' in its path",
    ),
    ("absolute-path", lambda k: k.tar_gz(k.folder(), extra=[member("/tmp/evil")]), "absolute"),
    (
        "symlink",
        lambda k: k.tar_gz(k.folder(), extra=[member("adapter/l", tarfile.SYMTYPE, link="/etc")]),
        "is a symlink",
    ),
    (
        "symlink-zip",
        lambda k: k.zip(k.folder(), extra=[zip_special("link", stat.S_IFLNK)]),
        "is a symlink",
    ),
    (
        "hardlink",
        lambda k: k.tar_gz(
            k.folder(), extra=[member("adapter/h", tarfile.LNKTYPE, link="adapter/hotswap.json")]
        ),
        "is a hardlink",
    ),
    (
        "fifo",
        lambda k: k.tar_gz(k.folder(), extra=[member("adapter/f", tarfile.FIFOTYPE)]),
        "device file or fifo",
    ),
    (
        "char-device",
        lambda k: k.tar_gz(k.folder(), extra=[member("adapter/d", tarfile.CHRTYPE)]),
        "device file or fifo",
    ),
    (
        "archive-over-size-cap",
        lambda k: k.tar_gz(k.folder(), extra=[member("adapter/noise", data=os.urandom(100 << 10))]),
        "over the limit of 65536 bytes",
    ),
    (
        "zip-bomb-member",
        lambda k: k.zip(k.folder(), extra=[("zeros", bytes(1 << 20))]),
        "'zeros' unpacks to more than 262144 bytes",
    ),
    (
        "tar-bomb-total",
        lambda k: k.tar_gz(
            k.folder(), extra=[member(f"adapter/z{i}", data=bytes(200 << 10)) for i in range(3)]
        ),
        "archive unpacks to more than 524288 bytes",
    ),
    (
        "tar-header-bomb",
        lambda k: k.tar_gz(k.folder(), extra=[member("adapter/" + "n" * (2 << 20))]),
        r"extended tar header \(pax or long name\) of \d+ bytes, over the limit of 4096",
    ),
    (
        "fifo-zip",
        lambda k: k.zip(k.folder(), extra=[zip_special("f", stat.S_IFIFO)]),
        "device file or fifo",
    ),
    (
        "too-many-members",
        lambda k: k.tar_gz(k.folder(), extra=[member(f"adapter/f{i}") for i in range(10)]),
        "more than 8 members",
    ),
    ("not-an-archive", raw_file(b"just some text, not an archive"), "not a .tar.gz, .tar or .zip"),
    ("truncated-gzip", truncated_tar_gz, "not a readable .tar.gz"),
    ("truncated-tar", truncated_tar, "not a readable .tar"),
    (
        "tar-traversal",
        lambda k: k.tar(k.folder(), extra=[member("../evil")]),
        r"'\.\.' in its path",
    ),
    (
        "tar-symlink",
        lambda k: k.tar(k.folder(), extra=[member("adapter/l", tarfile.SYMTYPE, link="/etc")]),
        "is a symlink",
    ),
    ("corrupt-zip", raw_file(b"PK\x03\x04" + b"\0" * 64), "not a readable .zip"),
    # adapter_config.json
    ("missing-config", without("adapter_config.json"), "adapter_config.json is missing"),
    ("unparseable-config", overwritten("adapter_config.json", b"{r: 4"), "is not valid JSON"),
    (
        "not-lora",
        lambda k: k.tar_gz(k.folder(config={"peft_type": "PREFIX_TUNING"})),
        "peft_type 'PREFIX_TUNING'; only LORA",
    ),
    (
        "rank-over-max",
        lambda k: k.tar_gz(k.folder(rank=16)),
        "rank 16 is above the served maximum of 8",
    ),
    (
        "unknown-target-module",
        lambda k: k.tar_gz(k.folder(config={"target_modules": ["q_proj", "lm_head"]})),
        r"\['lm_head'\] are not LoRA-targetable",
    ),
    (
        "regex-target-modules",
        lambda k: k.tar_gz(k.folder(config={"target_modules": ".*proj"})),
        "regular expressions are not supported",
    ),
    ("dora", lambda k: k.tar_gz(k.folder(config={"use_dora": True})), "DoRA"),
    # adapter_model.safetensors
    (
        "missing-weights",
        without("adapter_model.safetensors"),
        "adapter_model.safetensors is missing",
    ),
    (
        "weights-not-safetensors",
        overwritten("adapter_model.safetensors", b"\x80\x04garbage"),
        "not a valid safetensors file",
    ),
    (
        "tensor-name-mismatch",
        tensors_changed(
            lambda k, t: t.update(
                {"base_model.model.lm_head.lora_A.weight": np.zeros((4, 8), "f4")}
            )
        ),
        "'base_model.model.lm_head.lora_A.weight' is not a LoRA weight of the base model",
    ),
    (
        "tensor-shape-mismatch",
        tensors_changed(lambda k, t: t.update({q_name(0, "A"): np.zeros((4, 9), "f4")})),
        r"has shape \[4, 9\], expected \[4, 8\]",
    ),
    (
        "layer-out-of-range",
        tensors_changed(
            lambda k, t: t.update(
                {q_name(2, "A"): np.zeros((4, 8), "f4"), q_name(2, "B"): np.zeros((8, 4), "f4")}
            )
        ),
        "is for layer 2, but the base model has 2 layers",
    ),
    (
        "integer-dtype",
        tensors_changed(lambda k, t: t.update({q_name(0, "A"): np.zeros((4, 8), "i4")})),
        "has dtype I32",
    ),
    (
        "unpaired-lora-a",
        tensors_changed(lambda k, t: t.pop(q_name(1, "B"))),
        "layer 1 q_proj has lora_A but no lora_B",
    ),
    (
        "tensor-for-untargeted-module",
        lambda k: k.tar_gz(
            k.folder(config={"target_modules": ["q_proj"]}, tensors=k.tensors(targets=("v_proj",)))
        ),
        "targets 'v_proj', which adapter_config.json target_modules omits",
    ),
    # hotswap.json
    (
        "unparseable-manifest",
        overwritten("hotswap.json", b'{"name": '),
        "hotswap.json is not valid",
    ),
    (
        "wrong-base-fingerprint",
        lambda k: k.tar_gz(k.folder(manifest={"base_model": "sha256:" + "1" * 64})),
        "trained for base model sha256:1111",
    ),
    (
        "invalid-json-schema",
        lambda k: k.tar_gz(k.folder(manifest=task(output_schema={"type": "nonsense"}))),
        "output_schema is not a valid JSON Schema",
    ),
    (
        "bad-name",
        lambda k: k.tar_gz(k.folder(name="Bad@Name")),
        "adapter name 'Bad@Name' is invalid",
    ),
    ("no-name", lambda k: k.tar_gz(k.folder(name=None)), "the adapter has no name"),
    (
        "template-without-input",
        lambda k: k.tar_gz(k.folder(manifest=task(input_template="Text:"))),
        "input_template must contain {input}",
    ),
    (
        "distribution-not-summing-to-one",
        lambda k: k.tar_gz(
            k.folder(manifest=task(reference_distribution={"buy": 0.5, "sell": 0.4}))
        ),
        "reference_distribution must sum to 1",
    ),
    (
        "unknown-manifest-field",
        lambda k: k.tar_gz(k.folder(manifest=task(sytem_message="typo"))),
        r"task\.sytem_message: Extra inputs are not permitted",
    ),
    (
        "schema-check-hook-refuses",
        lambda k: k.tar_gz(
            k.folder(
                manifest=task(
                    output_schema={"type": "object", "properties": {"intent": {"pattern": "^a"}}}
                )
            )
        ),
        "the decoder cannot compile",
    ),
]


@pytest.mark.parametrize(("build", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_upload_is_rejected_and_changes_nothing(
    build: Callable[[AdapterKit], Path],
    message: str,
    registry: AdapterRegistry,
    kit: AdapterKit,
    snapshot: Snapshot,
) -> None:
    registry.register(kit.tar_gz(kit.folder(name="existing")))
    before = snapshot()

    with pytest.raises(AdapterRejected, match=message):
        registry.register(build(kit))
    assert snapshot() == before
