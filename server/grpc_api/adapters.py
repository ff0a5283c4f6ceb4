"""`hotswap.v1.Adapters`: adapter management on the same domain calls as `/v1/adapters`
(`server/adapter_service.py`)."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from adapters.registry import AdapterSummary
from adapters.store import AdapterVersion
from server.auth import KeyRing, Role
from server.errors import InvalidRequest, PayloadTooLarge
from server.grpc_api.gen.hotswap.v1 import adapters_pb2 as pb
from server.grpc_api.gen.hotswap.v1 import adapters_pb2_grpc
from server.grpc_api.guard import GuardedServicer, StateGetter, guarded
from server.grpc_api.structs import to_struct
from server.requests import save_capped


class AdaptersServicer(adapters_pb2_grpc.AdaptersServicer, GuardedServicer):
    def __init__(self, keys: KeyRing, state: StateGetter, max_upload_bytes: int) -> None:
        super().__init__(keys, state)
        self._max_upload_bytes = max_upload_bytes

    @guarded(Role.ADMIN)
    async def UploadAdapter(  # noqa: N802 (gRPC method name)
        self, request_iterator: AsyncIterator[pb.UploadAdapterRequest], context: Any
    ) -> pb.UploadAdapterResponse:
        """Stream the archive to a temporary file; register it only when exactly the
        announced number of bytes arrived."""
        service = self.ready().adapters
        first = await anext(request_iterator, None)
        if first is None or first.WhichOneof("payload") != "header":
            raise InvalidRequest("Send an UploadHeader first, then the archive in chunks.")
        header = first.header
        limit = self._max_upload_bytes
        if header.size <= 0:
            raise InvalidRequest("UploadHeader.size must be the archive's size in bytes (> 0).")
        if header.size > limit:
            raise PayloadTooLarge(
                f"The archive ({header.size} bytes) is larger than the limit of {limit} bytes."
            )
        with tempfile.TemporaryDirectory(prefix="hotswap-upload-") as tmp:
            archive = Path(tmp) / "upload"
            written = await save_capped(_chunks(request_iterator, header.size), archive, limit)
            if written != header.size:
                raise InvalidRequest(
                    f"The upload ended after {written} of the {header.size} bytes announced; "
                    "nothing was stored."
                )
            result = await service.upload(
                archive,
                name=header.name if header.HasField("name") else None,
                description=header.description if header.HasField("description") else None,
            )
        return pb.UploadAdapterResponse(adapter=version(result.adapter), created=result.created)

    @guarded(Role.ADMIN)
    async def ListAdapters(  # noqa: N802 (gRPC method name)
        self, request: pb.ListAdaptersRequest, context: Any
    ) -> pb.ListAdaptersResponse:
        adapters = await self.ready().adapters.list_adapters()
        return pb.ListAdaptersResponse(adapters=[summary(a) for a in adapters])

    @guarded(Role.ADMIN)
    async def GetAdapter(  # noqa: N802 (gRPC method name)
        self, request: pb.GetAdapterRequest, context: Any
    ) -> pb.Adapter:
        detail = await self.ready().adapters.get(request.name)
        message = pb.Adapter(name=detail.name, versions=[version(v) for v in detail.versions])
        if detail.promoted_version is not None:
            message.promoted_version = detail.promoted_version
        return message

    @guarded(Role.ADMIN)
    async def GetAdapterVersion(  # noqa: N802 (gRPC method name)
        self, request: pb.GetAdapterVersionRequest, context: Any
    ) -> pb.AdapterVersion:
        return version(await self.ready().adapters.get_version(request.name, request.version))

    @guarded(Role.ADMIN)
    async def PromoteAdapter(  # noqa: N802 (gRPC method name)
        self, request: pb.PromoteAdapterRequest, context: Any
    ) -> pb.AdapterVersion:
        return version(await self.ready().adapters.promote(request.name, request.version))

    @guarded(Role.ADMIN)
    async def RollbackAdapter(  # noqa: N802 (gRPC method name)
        self, request: pb.RollbackAdapterRequest, context: Any
    ) -> pb.AdapterVersion:
        return version(await self.ready().adapters.rollback(request.name))

    @guarded(Role.ADMIN)
    async def DeleteAdapter(  # noqa: N802 (gRPC method name)
        self, request: pb.DeleteAdapterRequest, context: Any
    ) -> pb.DeleteAdapterResponse:
        await self.ready().adapters.delete(request.name, request.version)
        return pb.DeleteAdapterResponse()


async def _chunks(
    messages: AsyncIterator[pb.UploadAdapterRequest], announced: int
) -> AsyncIterator[bytes]:
    received = 0
    async for message in messages:
        if message.WhichOneof("payload") != "chunk":
            raise InvalidRequest("Only the first message may be an UploadHeader.")
        received += len(message.chunk)
        if received > announced:
            raise InvalidRequest(
                f"The upload sent more than the {announced} bytes announced; nothing was stored."
            )
        yield message.chunk


def version(stored: AdapterVersion) -> pb.AdapterVersion:
    """One stored version as the API shows it (the server's file paths stay private)."""
    message = pb.AdapterVersion(
        name=stored.name,
        version=stored.version,
        digest=stored.digest,
        manifest=to_struct(stored.manifest.model_dump(mode="json")),
    )
    message.created_at.FromDatetime(stored.created_at)
    return message


def summary(adapter: AdapterSummary) -> pb.AdapterSummary:
    message = pb.AdapterSummary(
        name=adapter.name, versions=adapter.versions, description=adapter.description
    )
    if adapter.promoted_version is not None:
        message.promoted_version = adapter.promoted_version
    return message
