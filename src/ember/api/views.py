"""The JSON the SDK parses: ``Sandbox``, ``SandboxDetail``, ``ListedSandbox``, ``SandboxMetric``.

Field names and required fields are the SDK 2.63 models' (``e2b/api/client/models``): a
missing required field crashes the SDK's parser, so every answer carries all of them.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from ember.api.network import public_view
from ember.api.records import SandboxRecord, SandboxSpec, SnapshotRecord
from ember.api.tokens import TokenMinter

CLIENT_ID = "6532622b"
"""The deprecated ``clientID``: the original always answers this constant."""
PAUSED_ENVD_FALLBACK = "v1.0.0"


def rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def sandbox_json(
    sandbox_id: str, spec: SandboxSpec, tokens: TokenMinter, domain: str | None
) -> dict[str, Any]:
    """``Sandbox``: what create, connect, resume and fork answer."""
    body: dict[str, Any] = {
        "templateID": spec.base_template_id,
        "sandboxID": sandbox_id,
        "clientID": CLIENT_ID,
        "envdVersion": spec.envd_version,
    }
    if spec.alias:
        body["alias"] = spec.alias
    if spec.secure:
        body["envdAccessToken"] = tokens.envd_token(sandbox_id)
    body["trafficAccessToken"] = None if spec.allow_public_traffic else tokens.traffic_token(sandbox_id)
    body["domain"] = domain
    return body


def _listed(
    sandbox_id: str, spec: SandboxSpec, started_at: dt.datetime, end_at: dt.datetime, state: str, envd: str
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "templateID": spec.base_template_id,
        "sandboxID": sandbox_id,
        "clientID": CLIENT_ID,
        "startedAt": rfc3339(started_at),
        "endAt": rfc3339(end_at),
        "envdVersion": envd,
        "cpuCount": spec.vcpu,
        "memoryMB": spec.ram_mb,
        "diskSizeMB": spec.disk_mb,
        "state": state,
        "metadata": dict(spec.metadata),
        "volumeMounts": [],
    }
    if spec.alias:
        body["alias"] = spec.alias
    return body


def listed_running(record: SandboxRecord, state: str) -> dict[str, Any]:
    return _listed(
        record.sandbox_id, record.spec, record.started_at, record.end_at, state, record.spec.envd_version
    )


def listed_paused(snapshot: SnapshotRecord) -> dict[str, Any]:
    spec = snapshot.spec
    return _listed(
        snapshot.sandbox_id,
        spec,
        snapshot.started_at,
        snapshot.paused_at,
        "paused",
        spec.envd_version or PAUSED_ENVD_FALLBACK,
    )


def _detail_extras(body: dict[str, Any], sandbox_id: str, spec: SandboxSpec, tokens: TokenMinter) -> None:
    if spec.secure:
        body["envdAccessToken"] = tokens.envd_token(sandbox_id)
    body["allowInternetAccess"] = spec.allow_internet_access
    body["network"] = public_view(spec.network)
    body["lifecycle"] = {"autoResume": spec.auto_resume, "onTimeout": "pause" if spec.auto_pause else "kill"}


def detail_running(
    record: SandboxRecord, state: str, tokens: TokenMinter, domain: str | None
) -> dict[str, Any]:
    """``SandboxDetail`` of a sandbox in the catalog (``state`` running, or paused while pausing)."""
    body = listed_running(record, state)
    _detail_extras(body, record.sandbox_id, record.spec, tokens)
    body["domain"] = domain
    return body


def detail_paused(snapshot: SnapshotRecord, tokens: TokenMinter) -> dict[str, Any]:
    """``SandboxDetail`` of a paused sandbox: ``endAt`` is the pause time, ``domain`` null."""
    body = listed_paused(snapshot)
    _detail_extras(body, snapshot.sandbox_id, snapshot.spec, tokens)
    body["domain"] = None
    body["pauseMode"] = "filesystem" if snapshot.filesystem_only else "full"
    return body


def error_json(code: int, message: str) -> dict[str, Any]:
    return {"code": code, "message": message}
