"""Adapter management: upload, list, inspect, promote, roll back, delete, and safe rollouts
of a new version (canary or shadow, promoted or rolled back by gates)."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request, Response, UploadFile
from fastapi import Path as PathParam
from pydantic import BaseModel, Field

from adapters.manifest import MAX_VERSION
from adapters.registry import AdapterSummary
from adapters.rollouts import Rollout, RolloutState
from adapters.store import AdapterVersion
from server.adapter_service import AdapterService
from server.catalog import ModelCatalog
from server.http.state import get_adapter_service, get_catalog
from server.requests import save_capped
from server.rollouts.plan import RolloutPlan

router = APIRouter(prefix="/v1/adapters", tags=["adapters"])

Service = Annotated[AdapterService, Depends(get_adapter_service)]
Catalog = Annotated[ModelCatalog, Depends(get_catalog)]
Version = Annotated[int, PathParam(ge=1, le=MAX_VERSION, description="A version number.")]
_CHUNK = 1 << 20


class VersionView(BaseModel):
    """One stored version as the API shows it (the server's file paths stay private)."""

    name: str
    version: int
    digest: str
    created_at: datetime
    manifest: dict[str, Any]

    @classmethod
    def of(cls, version: AdapterVersion) -> VersionView:
        return cls(
            name=version.name,
            version=version.version,
            digest=version.digest,
            created_at=version.created_at,
            manifest=version.manifest.model_dump(mode="json"),
        )


class AdapterView(BaseModel):
    name: str
    promoted_version: int | None
    versions: list[VersionView]


class UploadView(VersionView):
    created: bool = Field(description="False when this exact upload was already stored.")


class PromoteBody(BaseModel):
    version: int = Field(ge=1, le=MAX_VERSION)


class RolloutView(Rollout):
    """A rollout with its transitions; the active one also with this server's live figures."""

    live: dict[str, Any] | None = Field(
        default=None,
        description="Candidate against current as this server measured them so far.",
    )


@router.post("", status_code=201)
async def upload_adapter(
    request: Request,
    response: Response,
    service: Service,
    file: UploadFile,
    name: Annotated[str | None, Form()] = None,
    description: Annotated[str | None, Form()] = None,
) -> UploadView:
    """Upload a `.tar.gz`, `.tar` or `.zip` of a PEFT LoRA folder (and optionally `hotswap.json`).
    201 with the new version; 200 with the existing one when the same upload is stored."""
    limit = request.app.state.settings.max_upload_bytes
    with tempfile.TemporaryDirectory(prefix="hotswap-upload-") as tmp:
        archive = Path(tmp) / "upload"
        await save_capped(_chunks(file), archive, limit)
        result = await service.upload(archive, name=name, description=description)
    if not result.created:
        response.status_code = 200
    return UploadView(**VersionView.of(result.adapter).model_dump(), created=result.created)


async def _chunks(file: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await file.read(_CHUNK):
        yield chunk


@router.get("")
async def list_adapters(service: Service) -> list[AdapterSummary]:
    return await service.list_adapters()


@router.get("/{name}")
async def get_adapter(name: str, service: Service) -> AdapterView:
    detail = await service.get(name)
    return AdapterView(
        name=detail.name,
        promoted_version=detail.promoted_version,
        versions=[VersionView.of(v) for v in detail.versions],
    )


@router.get("/{name}/versions/{version}")
async def get_version(name: str, version: Version, service: Service) -> VersionView:
    return VersionView.of(await service.get_version(name, version))


@router.post("/{name}/promote")
async def promote(name: str, body: PromoteBody, service: Service) -> VersionView:
    """Load the version, then serve it for the bare name; returns once it serves."""
    return VersionView.of(await service.promote(name, body.version))


@router.post("/{name}/rollback")
async def rollback(name: str, service: Service) -> VersionView:
    """Serve again the version promoted before the current one."""
    return VersionView.of(await service.rollback(name))


@router.delete("/{name}/versions/{version}", status_code=204)
async def delete_version(name: str, version: Version, service: Service) -> None:
    """Delete a version; 409 while it is the promoted one."""
    await service.delete(name, version)


@router.post("/{name}/rollouts", status_code=201)
async def start_rollout(name: str, body: RolloutPlan, service: Service) -> RolloutView:
    """Load the version, then put it on trial: a canary of `percent` % of the name's
    requests, or a shadow of every request. 409 while another rollout of the name runs."""
    rollout = await service.start_rollout(name, body.version, body.mode, body.share, body.gates)
    return RolloutView(**rollout.model_dump())


@router.get("/{name}/rollouts")
async def list_rollouts(name: str, service: Service, catalog: Catalog) -> list[RolloutView]:
    """Every rollout of the adapter, oldest first, with each transition's reason and figures."""
    return [_view(rollout, catalog) for rollout in await service.rollouts(name)]


@router.post("/{name}/rollouts/promote")
async def promote_rollout(name: str, service: Service) -> RolloutView:
    """Promote the active rollout's candidate now, whatever its figures."""
    return RolloutView(**(await service.end_rollout(name, RolloutState.PROMOTED)).model_dump())


@router.post("/{name}/rollouts/abort")
async def abort_rollout(name: str, service: Service) -> RolloutView:
    """Stop the active rollout; the current version answers every request again."""
    return RolloutView(**(await service.end_rollout(name, RolloutState.ABORTED)).model_dump())


def _view(rollout: Rollout, catalog: ModelCatalog) -> RolloutView:
    tracker = catalog.rollouts.tracker(rollout.name)
    live = None
    if rollout.state is RolloutState.ACTIVE and tracker and tracker.rollout.id == rollout.id:
        live = tracker.figures().as_dict()
    return RolloutView(**rollout.model_dump(), live=live)
