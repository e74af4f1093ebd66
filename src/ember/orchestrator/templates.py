"""E2B's ``TemplateService`` on the node: template builds run here, one thread each.

``TemplateCreate`` starts a build (``ember.templates.build_template``) and returns at once;
the control plane polls ``TemplateBuildStatus`` for its state, its log from an offset, and the
failing step. ``TemplateBuildDelete`` cancels a build still running (between steps) and forgets
it; the objects of a finished one are reclaimed by garbage collection, which knows every build
that still references them. ``InitLayerFileUpload`` tells whether a COPY step's files are in
storage already, and otherwise answers with a URL of this node's own upload endpoint
(``PUT /upload/{scope}/{hash}?token=...`` on the proxy port, a per-daemon HMAC token), where
the SDK puts the tar; the node stores it at the cache's files key.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import hmac
import logging
import re
import secrets
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import grpc
from aiohttp import web
from google.protobuf import empty_pb2, timestamp_pb2

from ember.build import BuildFile
from ember.envd import ENVD_VERSION
from ember.errors import EmberError, UsageError
from ember.orchestrator.manager import OrchestratorError
from ember.orchestrator.service import scheduling_metadata
from ember.rpc import template_manager_pb2 as tpb
from ember.rpc import template_manager_pb2_grpc
from ember.sandbox import Node, SchedulingInfo
from ember.sandbox.records import scheduling_info
from ember.storage import MEMFILE, ROOTFS
from ember.templates import (
    FromImage,
    FromTemplate,
    LogLine,
    Step,
    TemplateBuildError,
    TemplateResult,
    TemplateSpec,
    build_template,
    files_key,
    scope_of,
)

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

LOG_PAGE_LIMIT = 100
FINISHED_KEPT_S = 3600.0
"""How long a finished build's status and log stay answerable: long enough for the API to see
the outcome (it polls every few seconds), bounded so a node that builds for months does not
hold every log it ever wrote."""
_HASH = re.compile(r"[0-9a-f]{64}")
_LEVELS = {"debug": tpb.Debug, "info": tpb.Info, "warn": tpb.Warn, "error": tpb.Error}


@dataclasses.dataclass
class BuildRecord:
    """One build's state, log and outcome, as TemplateBuildStatus reports them."""

    template_id: str
    build_id: uuid.UUID
    status: tpb.TemplateBuildState = tpb.Building
    entries: list[tpb.TemplateBuildLogEntry] = dataclasses.field(default_factory=list)
    reason: tpb.TemplateBuildStatusReason | None = None
    result: TemplateResult | None = None
    scheduling: SchedulingInfo | None = None
    cancel: threading.Event = dataclasses.field(default_factory=threading.Event)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    finished_at: float | None = None

    def log(self, line: LogLine) -> None:
        stamp = timestamp_pb2.Timestamp()
        stamp.FromDatetime(dt.datetime.now(dt.UTC))
        entry = tpb.TemplateBuildLogEntry(
            timestamp=stamp,
            message=line.message,
            level=_LEVELS.get(line.level, tpb.Info),
            fields={"step": line.step} if line.step else {},
        )
        with self.lock:
            self.entries.append(entry)


def spec_from_request(request: tpb.TemplateCreateRequest) -> TemplateSpec:
    """The build a TemplateCreate asks for; INVALID_ARGUMENT for what cannot be built."""
    config = request.template
    try:
        build_id = uuid.UUID(config.buildID)
    except ValueError:
        raise OrchestratorError(
            grpc.StatusCode.INVALID_ARGUMENT, f"buildID {config.buildID!r} is not a UUID"
        ) from None
    source: FromImage | FromTemplate
    which = config.WhichOneof("source")
    if which == "fromTemplate":
        try:
            source = FromTemplate(uuid.UUID(config.fromTemplate.buildID), config.fromTemplate.alias)
        except ValueError:
            raise OrchestratorError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"fromTemplate.buildID {config.fromTemplate.buildID!r} is not a UUID",
            ) from None
    elif which == "fromImage":
        registry = config.fromImageRegistry
        if registry.WhichOneof("type") in ("aws", "gcp"):
            raise OrchestratorError(
                grpc.StatusCode.UNIMPLEMENTED,
                "AWS and GCP registry credentials are not supported by ember: use a general registry login",
            )
        general = registry.general
        source = FromImage(config.fromImage, general.username or None, general.password or None)
    else:
        raise OrchestratorError(
            grpc.StatusCode.INVALID_ARGUMENT, "a template needs fromImage or fromTemplate"
        )
    try:
        steps = tuple(
            Step.parse(step.type, list(step.args), step.filesHash or None, step.force)
            for step in config.steps
        )
    except UsageError as exc:
        raise OrchestratorError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc
    return TemplateSpec(
        template_id=config.templateID,
        build_id=build_id,
        source=source,
        steps=steps,
        start_cmd=config.startCommand,
        ready_cmd=config.readyCommand,
        force=config.force,
        vcpu=config.vCpuCount or 2,
        memory_mb=config.memoryMB or 1024,
        disk_mb=config.diskSizeMB or 1024,
        cache_scope=request.cacheScope,
    )


class TemplateService(template_manager_pb2_grpc.TemplateServiceServicer):
    """``/TemplateService/*`` (see the module docstring)."""

    def __init__(self, node: Node, upload_base_url: Callable[[], str]) -> None:
        self.node = node
        self.upload_base_url = upload_base_url
        self._secret = secrets.token_bytes(32)
        self._builds: dict[uuid.UUID, BuildRecord] = {}
        self._lock = threading.Lock()

    def _answer(self, context: grpc.ServicerContext, handler: Callable[[], _T]) -> _T:
        try:
            return handler()
        except OrchestratorError as exc:
            context.abort(exc.code, str(exc))
        except EmberError as exc:
            context.abort(grpc.StatusCode.INTERNAL, str(exc))
        except Exception as exc:  # a bug: one line to the caller, the traceback to the log
            _log.exception("template service failed")
            context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
        raise AssertionError("grpc's abort returned")

    # -- builds ------------------------------------------------------------------------------

    def TemplateCreate(
        self, request: tpb.TemplateCreateRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        def create() -> empty_pb2.Empty:
            spec = spec_from_request(request)
            record = BuildRecord(spec.template_id, spec.build_id)
            with self._lock:
                self._forget_finished()
                if spec.build_id in self._builds:
                    raise OrchestratorError(
                        grpc.StatusCode.ALREADY_EXISTS,
                        f"template build {spec.build_id} is already known here",
                    )
                self._builds[spec.build_id] = record
            threading.Thread(
                target=self._build, args=(spec, record), name=f"template-{spec.build_id}", daemon=True
            ).start()
            return empty_pb2.Empty()

        return self._answer(context, create)

    def _forget_finished(self) -> None:
        """Drop the records of builds finished more than ``FINISHED_KEPT_S`` ago (lock held)."""
        horizon = time.monotonic() - FINISHED_KEPT_S
        for build_id in [
            key
            for key, record in self._builds.items()
            if record.finished_at is not None and record.finished_at < horizon
        ]:
            del self._builds[build_id]

    def _build(self, spec: TemplateSpec, record: BuildRecord) -> None:
        _log.info("template build %s of %s started", spec.build_id, spec.template_id)
        try:
            result = build_template(self.node, spec, record.log, record.cancel)
        except TemplateBuildError as exc:
            record.log(LogLine(str(exc), level="error", step=exc.step))
            record.reason = tpb.TemplateBuildStatusReason(message=str(exc), step=exc.step)
            record.status = tpb.Failed
            record.finished_at = time.monotonic()
            _log.warning("template build %s failed at step %s: %s", spec.build_id, exc.step, exc)
            return
        except Exception as exc:  # any other failure still ends this build alone
            _log.exception("template build %s failed", spec.build_id)
            record.log(LogLine(f"the build failed: {exc}", level="error"))
            record.reason = tpb.TemplateBuildStatusReason(message=f"the build failed: {exc}")
            record.status = tpb.Failed
            record.finished_at = time.monotonic()
            return
        record.result = result
        record.scheduling = scheduling_info(
            result.build_id,
            BuildFile.open(self.node.storage, result.build_id, MEMFILE).header,
            BuildFile.open(self.node.storage, result.build_id, ROOTFS).header,
        )
        record.status = tpb.Completed
        record.finished_at = time.monotonic()
        _log.info(
            "template build %s ready: %d layers built, %d from the cache",
            spec.build_id,
            result.layers_built,
            result.layers_cached,
        )

    def _record(self, build_id: str) -> BuildRecord:
        try:
            key = uuid.UUID(build_id)
        except ValueError:
            raise OrchestratorError(
                grpc.StatusCode.INVALID_ARGUMENT, f"buildID {build_id!r} is not a UUID"
            ) from None
        with self._lock:
            record = self._builds.get(key)
        if record is None:
            raise OrchestratorError(
                grpc.StatusCode.NOT_FOUND, f"template build {build_id} is not known on this node"
            )
        return record

    def TemplateBuildStatus(
        self, request: tpb.TemplateStatusRequest, context: grpc.ServicerContext
    ) -> tpb.TemplateBuildStatusResponse:
        def status() -> tpb.TemplateBuildStatusResponse:
            record = self._record(request.buildID)
            with record.lock:
                entries = list(record.entries)
            if request.HasField("level"):
                entries = [entry for entry in entries if entry.level >= request.level]
            start = max(0, request.offset) if request.HasField("offset") else 0
            limit = request.limit if request.HasField("limit") and request.limit else LOG_PAGE_LIMIT
            response = tpb.TemplateBuildStatusResponse(
                status=record.status, logEntries=entries[start : start + limit]
            )
            if record.reason is not None:
                response.reason.CopyFrom(record.reason)
            if record.result is not None and record.scheduling is not None:
                template = record.result.metadata.template
                rootfs = BuildFile.open(self.node.storage, record.result.build_id, ROOTFS).header
                response.metadata.CopyFrom(
                    tpb.TemplateBuildMetadata(
                        rootfsSizeKey=rootfs.metadata.size >> 20,
                        envdVersionKey=ENVD_VERSION,
                        kernelVersion=template.kernel_version,
                        firecrackerVersion=template.firecracker_version,
                        schedulingMetadata=scheduling_metadata(record.scheduling),
                    )
                )
            return response

        return self._answer(context, status)

    def TemplateBuildDelete(
        self, request: tpb.TemplateBuildDeleteRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        def delete() -> empty_pb2.Empty:
            record = self._record(request.buildID)
            record.cancel.set()
            with self._lock:
                self._builds.pop(record.build_id, None)
            return empty_pb2.Empty()

        return self._answer(context, delete)

    # -- COPY files --------------------------------------------------------------------------

    def _token(self, scope: str, files_hash: str) -> str:
        return hmac.new(self._secret, f"{scope}/{files_hash}".encode(), hashlib.sha256).hexdigest()

    def InitLayerFileUpload(
        self, request: tpb.InitLayerFileUploadRequest, context: grpc.ServicerContext
    ) -> tpb.InitLayerFileUploadResponse:
        def init() -> tpb.InitLayerFileUploadResponse:
            if not _HASH.fullmatch(request.hash):
                raise OrchestratorError(
                    grpc.StatusCode.INVALID_ARGUMENT, f"hash {request.hash!r} is not a SHA-256 hex digest"
                )
            scope = scope_of(request.cacheScope if request.HasField("cacheScope") else "")
            if self.node.storage.exists(files_key(scope, request.hash)):
                return tpb.InitLayerFileUploadResponse(present=True)
            token = self._token(scope, request.hash)
            url = f"{self.upload_base_url()}/upload/{scope}/{request.hash}?token={token}"
            return tpb.InitLayerFileUploadResponse(present=False, url=url)

        return self._answer(context, init)

    async def upload(self, request: web.Request) -> web.StreamResponse:
        """``PUT /upload/{scope}/{hash}?token=``: store the body as the COPY step's files."""
        parts = request.path.strip("/").split("/")
        if request.method != "PUT" or len(parts) != 3 or not _HASH.fullmatch(parts[2]):
            return web.json_response({"code": 404, "message": "no such upload"}, status=404)
        scope, files_hash = parts[1], parts[2]
        if not hmac.compare_digest(request.query.get("token", ""), self._token(scope, files_hash)):
            return web.json_response({"code": 403, "message": "the upload token is invalid"}, status=403)
        with tempfile.NamedTemporaryFile(dir=self._scratch(), prefix="upload-", suffix=".tar") as target:
            async for chunk in request.content.iter_chunked(1 << 20):
                target.write(chunk)
            target.flush()
            key = files_key(scope, files_hash)
            await asyncio.to_thread(self.node.storage.put_file, key, Path(target.name))
        return web.Response(status=200)

    def _scratch(self) -> Path:
        directory = self.node.env.orchestrator_base_path / "build-templates"
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        return directory
