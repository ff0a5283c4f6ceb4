"""Safe unpacking of an uploaded adapter archive (`.tar.gz`/`.tgz`, `.tar` or `.zip`).

Nothing in an archive is trusted: the format is detected by magic bytes, every member path is
checked before anything is written, links and special files are refused, and sizes are
counted on the bytes actually decompressed (headers of zip bombs lie). Limits act before the
parsing they bound: a tar's extended headers are sized before `tarfile` reads them (its pax
parser is quadratic on Python 3.11.7, CVE-2024-6232), and a zip's member count and central
directory size are read from its end record before `zipfile` parses the directory.
"""

from __future__ import annotations

import gzip
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import IO, Any, BinaryIO, Protocol

from pydantic import BaseModel, ConfigDict, Field

from adapters.errors import AdapterRejected

PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"})
_IGNORED_TOP = "__MACOSX"  # resource forks added by macOS zip tools
_CHUNK = 1 << 20
_MAX_NAME_BYTES = 1024  # a member's whole path, well under PATH_MAX
_MAX_PART_BYTES = 255  # one folder or file name (NAME_MAX)
_TAR_HEADER_ALLOWANCE = 1 << 20  # decompressed tar headers and padding beyond member bytes
_GZIP_MAGIC = b"\x1f\x8b"
_TAR_MAGIC_AT, _TAR_MAGIC = 257, b"ustar"  # POSIX and GNU tar headers
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
# tarfile's pax parser runs regular expressions whose time grows with the square of one
# header's size (CVE-2024-6232 on Python 3.11.7: ~20 ms at 4 KiB, ~4 s at 64 KiB); so one
# extended header (pax records, GNU long name) is kept small, and all of them together too.
MAX_EXTENDED_HEADER_BYTES = 4 << 10
MAX_EXTENDED_HEADERS_TOTAL = 32 << 10
# Bytes of zip central directory allowed per member: a 46-byte entry, its name and extras.
_ZIP_DIRECTORY_ENTRY_BYTES = 1 << 10
# zipfile's own end-record reader, so that the counts checked are the ones it will use.
_zip_end_record: Any = zipfile._EndRecData  # type: ignore[attr-defined]
_ZIP_ENTRIES, _ZIP_DIRECTORY_SIZE = 4, 5  # zipfile's _ECD_ENTRIES_TOTAL, _ECD_SIZE


class ArchiveLimits(BaseModel):
    """Caps applied while unpacking one upload."""

    model_config = ConfigDict(frozen=True)

    max_archive_bytes: int = Field(default=1 << 30, gt=0, description="Size of the upload.")
    max_members: int = Field(default=64, gt=0, description="Files and folders in the archive.")
    max_member_bytes: int = Field(default=1 << 30, gt=0, description="One unpacked file.")
    max_unpacked_bytes: int = Field(default=2 << 30, gt=0, description="All unpacked files.")


def extract_archive(archive: Path, dest: Path, limits: ArchiveLimits) -> Path:
    """Unpack `archive` into the empty folder `dest` and return the adapter folder in it.

    The adapter folder is `dest` itself, or its only top-level folder when the archive wraps
    everything in one. Raises AdapterRejected naming the first offending member or limit.
    """
    size = archive.stat().st_size
    if size > limits.max_archive_bytes:
        raise AdapterRejected(
            f"archive is {size} bytes, over the limit of {limits.max_archive_bytes} bytes"
        )
    with archive.open("rb") as fh:
        head = fh.read(_TAR_MAGIC_AT + len(_TAR_MAGIC))
    writer = _MemberWriter(dest, limits)
    if head.startswith(_GZIP_MAGIC):
        with gzip.open(archive, "rb") as raw:
            _extract_tar(raw, writer, limits, ".tar.gz")
    elif head[_TAR_MAGIC_AT:] == _TAR_MAGIC:
        with archive.open("rb") as raw:
            _extract_tar(raw, writer, limits, ".tar")
    elif head[:4] in _ZIP_MAGICS:
        _extract_zip(archive, writer, limits)
    else:
        raise AdapterRejected(
            "upload is not a .tar.gz, .tar or .zip archive (unrecognised first bytes)"
        )
    return _adapter_root(dest)


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _CappedReader:
    """A read-only stream that refuses to yield more than `cap` bytes in total."""

    def __init__(self, inner: _Readable, cap: int) -> None:
        self._inner = inner
        self._cap = cap
        self._left = cap

    def read(self, size: int = -1) -> bytes:
        data = self._inner.read(size)
        self._left -= len(data)
        if self._left < 0:
            raise AdapterRejected(f"archive unpacks to more than {self._cap} bytes")
        return data


class _MemberWriter:
    """Writes members under `dest`, enforcing path rules, the member count and byte caps."""

    def __init__(self, dest: Path, limits: ArchiveLimits) -> None:
        self._dest = dest
        self._limits = limits
        self._members = 0
        self._total = 0

    def count(self) -> None:
        self._members += 1
        if self._members > self._limits.max_members:
            raise AdapterRejected(
                f"archive has more than {self._limits.max_members} members; "
                "pack only the adapter files"
            )

    def target(self, name: str) -> Path | None:
        """The path for member `name`, or None to skip it; raises on an unsafe name."""
        if "\\" in name or name.startswith("/") or PurePosixPath(name).is_absolute():
            raise AdapterRejected(f"archive member {name!r} has an absolute or non-POSIX path")
        parts = [p for p in PurePosixPath(name).parts if p != "."]
        if len(name.encode(errors="surrogateescape")) > _MAX_NAME_BYTES or any(
            len(part.encode(errors="surrogateescape")) > _MAX_PART_BYTES for part in parts
        ):
            raise AdapterRejected(
                f"archive member {name[:64]!r}... has a path over {_MAX_NAME_BYTES} bytes or a "
                f"name over {_MAX_PART_BYTES} bytes"
            )
        if ".." in parts:
            raise AdapterRejected(f"archive member {name!r} has '..' in its path")
        if not parts or parts[0] == _IGNORED_TOP:
            return None
        if PurePosixPath(parts[-1]).suffix.lower() in PICKLE_SUFFIXES:
            raise AdapterRejected(
                f"archive member {name!r} is a pickle file; only safetensors weights are "
                "accepted (save with safe_serialization=True)"
            )
        return self._dest.joinpath(*parts)

    def write_dir(self, path: Path) -> None:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise AdapterRejected(f"archive folder {path.name!r} clashes with a file") from exc

    def write_file(self, path: Path, source: IO[bytes]) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            out = path.open("xb")
        except (FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
            rel = path.relative_to(self._dest)
            raise AdapterRejected(f"archive member {str(rel)!r} appears twice or clashes") from exc
        written = 0
        with out:
            while chunk := source.read(_CHUNK):
                written += len(chunk)
                self._total += len(chunk)
                if written > self._limits.max_member_bytes:
                    raise AdapterRejected(
                        f"archive member {path.name!r} unpacks to more than "
                        f"{self._limits.max_member_bytes} bytes"
                    )
                if self._total > self._limits.max_unpacked_bytes:
                    raise AdapterRejected(
                        f"archive unpacks to more than {self._limits.max_unpacked_bytes} bytes"
                    )
                out.write(chunk)


def _extract_tar(raw: _Readable, writer: _MemberWriter, limits: ArchiveLimits, kind: str) -> None:
    """Unpack the tar stream `raw` (decompressed already); `kind` names it in errors."""
    cap = limits.max_unpacked_bytes + _TAR_HEADER_ALLOWANCE
    try:
        with tarfile.open(  # type: ignore[call-overload]
            fileobj=_CappedReader(raw, cap),
            mode="r|",
            tarinfo=_bounded_tar_info(_HeaderBudget()),
        ) as tar:
            for member in tar:
                writer.count()
                path = writer.target(member.name)
                _check_tar_type(member)
                if path is None:
                    continue
                if member.isdir():
                    writer.write_dir(path)
                    continue
                source = tar.extractfile(member)
                if source is None:
                    raise AdapterRejected(f"archive member {member.name!r} has no data")
                writer.write_file(path, source)
    except (tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise AdapterRejected(f"archive is not a readable {kind}: {exc}") from exc


class _HeaderBudget:
    """The extended headers of one tar archive, charged before `tarfile` reads them."""

    def __init__(self) -> None:
        self._left = MAX_EXTENDED_HEADERS_TOTAL

    def spend(self, header: tarfile.TarInfo) -> None:
        """Refuse `header` if its data, or all extended headers so far, are over the limits."""
        if header.size > MAX_EXTENDED_HEADER_BYTES:
            raise AdapterRejected(
                f"archive has an extended tar header (pax or long name) of {header.size} bytes, "
                f"over the limit of {MAX_EXTENDED_HEADER_BYTES} bytes"
            )
        self._left -= tarfile.BLOCKSIZE + header.size  # an empty header still costs a block
        if self._left < 0:
            raise AdapterRejected(
                "archive's extended tar headers (pax or long names) total more than "
                f"{MAX_EXTENDED_HEADERS_TOTAL} bytes"
            )


def _bounded_tar_info(budget: _HeaderBudget) -> type[tarfile.TarInfo]:
    """A TarInfo class that charges each extended header to `budget` before `tarfile` reads
    it, and refuses sparse files (their maps drive more unbounded parsing)."""

    class BoundedTarInfo(tarfile.TarInfo):
        def _proc_pax(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
            budget.spend(self)
            return super()._proc_pax(tar)  # type: ignore[misc]

        def _proc_gnulong(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
            budget.spend(self)
            return super()._proc_gnulong(tar)  # type: ignore[misc]

        def _proc_sparse(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
            raise _sparse_refused(self.name)

        def _proc_gnusparse_00(self, member: tarfile.TarInfo, *_: object) -> None:
            raise _sparse_refused(member.name)

        _proc_gnusparse_01 = _proc_gnusparse_10 = _proc_gnusparse_00

    return BoundedTarInfo


def _sparse_refused(name: str) -> AdapterRejected:
    return AdapterRejected(f"archive member {name!r} is a sparse file; pack regular files")


def _check_tar_type(member: tarfile.TarInfo) -> None:
    if member.issym():
        raise AdapterRejected(f"archive member {member.name!r} is a symlink; links are refused")
    if member.islnk():
        raise AdapterRejected(f"archive member {member.name!r} is a hardlink; links are refused")
    if member.ischr() or member.isblk() or member.isfifo():
        raise AdapterRejected(f"archive member {member.name!r} is a device file or fifo")
    if not (member.isreg() or member.isdir()):
        raise AdapterRejected(f"archive member {member.name!r} is not a regular file or folder")


def _extract_zip(archive: Path, writer: _MemberWriter, limits: ArchiveLimits) -> None:
    try:
        with archive.open("rb") as fh:
            _check_zip_directory(fh, limits)
            with zipfile.ZipFile(fh) as zf:
                for info in zf.infolist():
                    writer.count()
                    path = writer.target(info.filename)
                    _check_zip_type(info)
                    if path is None:
                        continue
                    if info.is_dir():
                        writer.write_dir(path)
                        continue
                    with zf.open(info) as source:
                        writer.write_file(path, source)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
        raise AdapterRejected(f"archive is not a readable .zip: {exc}") from exc


def _check_zip_directory(fh: BinaryIO, limits: ArchiveLimits) -> None:
    """Check the member count and central directory size that the zip's end record (zip64
    included) announces, before `zipfile` reads and parses the directory."""
    end = _zip_end_record(fh)
    fh.seek(0)
    if end is None:
        raise AdapterRejected("archive is not a readable .zip: no end of central directory")
    if end[_ZIP_ENTRIES] > limits.max_members:
        raise AdapterRejected(
            f"archive has {end[_ZIP_ENTRIES]} members, over the limit of {limits.max_members}; "
            "pack only the adapter files"
        )
    directory_cap = limits.max_members * _ZIP_DIRECTORY_ENTRY_BYTES
    if end[_ZIP_DIRECTORY_SIZE] > directory_cap:
        raise AdapterRejected(
            f"archive's central directory is {end[_ZIP_DIRECTORY_SIZE]} bytes, over the limit "
            f"of {directory_cap} bytes ({_ZIP_DIRECTORY_ENTRY_BYTES} per member)"
        )


def _check_zip_type(info: zipfile.ZipInfo) -> None:
    kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the zip tool stored no file type
    if kind == stat.S_IFLNK:
        raise AdapterRejected(f"archive member {info.filename!r} is a symlink; links are refused")
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise AdapterRejected(f"archive member {info.filename!r} is a device file or fifo")


def _adapter_root(dest: Path) -> Path:
    entries = list(dest.iterdir())
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return dest
