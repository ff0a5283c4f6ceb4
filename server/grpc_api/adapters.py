"""`hotswap.v1.Adapters`: adapter management and rollouts on the same domain calls as
`/v1/adapters` (`server/adapter_service.py`)."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from adapters.registry import AdapterSummary
from adapters.rollouts import Rollout, RolloutState
from adapters.store import AdapterVersion
from server.auth import KeyRing, Role
from server.catalog import ModelCatalog
from server.errors import InvalidRequest, PayloadTooLarge
from server.grpc_api.gen.hotswap.v1 import adapters_pb2 as pb
from server.grpc_api.gen.hotswap.v1 import adapters_pb2_grpc
from server.grpc_api.guard import GuardedServicer, StateGetter, guarded
from server.grpc_api.structs import to_struct
from server.requests import save_capped
from server.rollouts.plan import parse_plan


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

    @guarded(Role.ADMIN)
    async def StartRollout(  # noqa: N802 (gRPC method name)
        self, request: pb.StartRolloutRequest, context: Any
    ) -> pb.Rollout:
        fields: dict[str, Any] = {
            "version": request.version,
            "gates": {field.name: value for field, value in request.gates.ListFields()},
        }
        if request.mode:
            fields["mode"] = request.mode
        if request.HasField("percent"):
            fields["percent"] = request.percent
        plan = parse_plan(fields)
        started = await self.ready().adapters.start_rollout(
            request.name, plan.version, plan.mode, plan.share, plan.gates
        )
        return rollout_message(started, None)

    @guarded(Role.ADMIN)
    async def ListRollouts(  # noqa: N802 (gRPC method name)
        self, request: pb.ListRolloutsRequest, context: Any
    ) -> pb.ListRolloutsResponse:
        state = self.ready()
        rollouts = await state.adapters.rollouts(request.name)
        return pb.ListRolloutsResponse(
            rollouts=[rollout_message(r, state.catalog) for r in rollouts]
        )

    @guarded(Role.ADMIN)
    async def PromoteRollout(  # noqa: N802 (gRPC method name)
        self, request: pb.EndRolloutRequest, context: Any
    ) -> pb.Rollout:
        ended = await self.ready().adapters.end_rollout(request.name, RolloutState.PROMOTED)
        return rollout_message(ended, None)

    @guarded(Role.ADMIN)
    async def AbortRollout(  # noqa: N802 (gRPC method name)
        self, request: pb.EndRolloutRequest, context: Any
    ) -> pb.Rollout:
        ended = await self.ready().adapters.end_rollout(request.name, RolloutState.ABORTED)
        return rollout_message(ended, None)


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


def rollout_message(rollout: Rollout, catalog: ModelCatalog | None) -> pb.Rollout:
    """A rollout as the API shows it; with `catalog`, an active one with its live figures."""
    message = pb.Rollout(
        id=rollout.id,
        name=rollout.name,
        candidate=rollout.candidate,
        baseline=rollout.baseline,
        mode=rollout.mode.value,
        percent=rollout.percent,
        gates=to_struct(rollout.gates),
        state=rollout.state.value,
    )
    message.started_at.FromDatetime(rollout.started_at)
    if rollout.ended_at is not None:
        message.ended_at.FromDatetime(rollout.ended_at)
    if rollout.reason is not None:
        message.reason = rollout.reason
    for event in rollout.events:
        added = message.events.add(kind=event.kind, reason=event.reason)
        added.at.FromDatetime(event.at)
        added.figures.CopyFrom(to_struct(event.figures))
    tracker = catalog.rollouts.tracker(rollout.name) if catalog is not None else None
    if rollout.state is RolloutState.ACTIVE and tracker and tracker.rollout.id == rollout.id:
        message.live.CopyFrom(to_struct(tracker.figures().as_dict()))
    return message
