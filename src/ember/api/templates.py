"""Templates: listing, details, alias lookups, tags, deletion, and registering a build under a name.

Builds are made through ``builds`` (``POST /v3/templates`` and the build steps), or named
with ``-template`` (``register``). A template's current build is its ``default`` tag; other
tags (``name:v1``) name other builds (``POST /templates/tags``, ``DELETE /templates/tags``,
``GET /templates/{id}/tags``).

Deleting a template (or a snapshot: ``DELETE /templates/{snapshotID}``) drops it, its aliases,
tags and build rows, cancels its builds still running on their nodes, and tells gc: the
builds themselves go once nothing reads from them (a paused sandbox started from the
template keeps what it needs). The original refuses to delete a template while sandboxes
run from it or snapshots depend on it; ember does not need to, since gc keeps those builds.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ember.api.builds import cancel_unfinished
from ember.api.errors import ApiError, bad_request, template_not_found
from ember.api.ids import check_alias, new_template_id, parse_template_ref
from ember.api.listing import Cursor
from ember.api.plane import DEFAULT_TAG, ControlPlane, utcnow
from ember.api.records import Build, BuildStatus, Team, Template, TemplateKind
from ember.api.requests import Body
from ember.api.store import Store
from ember.api.views import rfc3339
from ember.errors import UsageError

DEFAULT_ENVD_VERSION = "0.5.4"
DEFAULT_VCPU = 2
DEFAULT_RAM_MB = 512
DEFAULT_DISK_MB = 1024


@dataclass(frozen=True)
class TemplateRegistration:
    """``-template alias=<build-id>[,vcpu=N][,memory=MB][,disk=MB][,envd=X.Y.Z]``."""

    alias: str
    build_id: str
    vcpu: int = DEFAULT_VCPU
    ram_mb: int = DEFAULT_RAM_MB
    disk_mb: int = DEFAULT_DISK_MB
    envd_version: str = DEFAULT_ENVD_VERSION

    @classmethod
    def parse(cls, text: str) -> TemplateRegistration:
        head, *options = text.split(",")
        alias, sep, build_id = head.partition("=")
        if not sep:
            raise UsageError(
                f"-template {text!r}: expected alias=<build-id>[,vcpu=N,memory=MB,disk=MB,envd=X.Y.Z]"
            )
        try:
            build_id = str(uuid.UUID(build_id))
        except ValueError:
            raise UsageError(f"-template {text!r}: {build_id!r} is not a build id (a UUID)") from None
        try:
            alias = check_alias(alias)
        except ApiError as exc:
            raise UsageError(f"-template {text!r}: {exc.message}") from None
        values: dict[str, Any] = {}
        fields = {"vcpu": "vcpu", "memory": "ram_mb", "disk": "disk_mb", "envd": "envd_version"}
        for option in options:
            key, sep, value = option.partition("=")
            if not sep or key not in fields:
                raise UsageError(
                    f"-template {text!r}: unknown option {option!r}; use vcpu=, memory=, disk=, envd="
                )
            if key == "envd":
                values[fields[key]] = value
            elif not value.isdigit() or int(value) < 1:
                raise UsageError(f"-template {text!r}: {key} must be a positive whole number")
            else:
                values[fields[key]] = int(value)
        return cls(alias, build_id, **values)


async def register(store: Store, team: Team, registration: TemplateRegistration) -> Template:
    """Make ``registration.alias`` name a template whose current build is ``build_id``.

    A new alias creates a template; a known one gets the build added (and made current)
    unless it already is. Idempotent: registering the same pair again changes nothing.
    """
    now = utcnow()
    existing = await store.find_template(registration.alias)
    if existing is not None and existing.build_id == registration.build_id:
        return existing
    template_id = existing.id if existing is not None else new_template_id()
    build = Build(
        build_id=registration.build_id,
        template_id=template_id,
        status=BuildStatus.READY,
        vcpu=registration.vcpu,
        ram_mb=registration.ram_mb,
        disk_mb=registration.disk_mb,
        envd_version=registration.envd_version,
        created_at=now,
        finished_at=now,
    )
    if await store.get_build(registration.build_id) is not None:
        raise UsageError(
            f"build {registration.build_id} already belongs to another template: register each build once"
        )
    if existing is not None:
        await store.add_build(build, make_current=True)
        return dataclasses.replace(existing, build_id=build.build_id)
    template = Template(
        id=template_id,
        team_id=team.id,
        kind=TemplateKind.TEMPLATE,
        public=False,
        build_id=build.build_id,
        created_at=now,
        updated_at=now,
        aliases=(registration.alias,),
    )
    await store.create_template(template, build)
    return template


async def find_own(store: Store, team: Team, reference: str) -> Template:
    """The team's template by id or name (a tag is ignored); 404 otherwise."""
    ref = parse_template_ref(reference)
    template = await store.find_template(ref.name)
    if template is None or template.team_id != team.id:
        raise template_not_found(reference)
    return template


def _status(current: Build | None, latest: Build | None) -> BuildStatus:
    """The template's build status: its latest build's while one is in progress, else the current's."""
    if latest is not None and not latest.finished:
        return latest.status
    if current is not None:
        return current.status
    return latest.status if latest is not None else BuildStatus.WAITING


def _build_json(build: Build) -> dict[str, Any]:
    body: dict[str, Any] = {
        "buildID": build.build_id,
        "status": str(build.status),
        "createdAt": rfc3339(build.created_at),
        "updatedAt": rfc3339(build.finished_at or build.created_at),
        "cpuCount": build.vcpu,
        "memoryMB": build.ram_mb,
        "diskSizeMB": build.disk_mb,
        "envdVersion": build.envd_version,
    }
    if build.finished_at is not None:
        body["finishedAt"] = rfc3339(build.finished_at)
    return body


async def template_json(
    store: Store, template: Template, builds: Sequence[Build] | None = None
) -> dict[str, Any]:
    """``Template``; with ``builds`` given, ``TemplateWithBuilds``."""
    all_builds = builds if builds is not None else await store.list_builds(template.id)
    current = next((build for build in all_builds if build.build_id == template.build_id), None)
    latest = all_builds[-1] if all_builds else None
    shown = current or latest
    body: dict[str, Any] = {
        "templateID": template.id,
        "buildID": template.build_id or "",
        "cpuCount": shown.vcpu if shown else 0,
        "memoryMB": shown.ram_mb if shown else 0,
        "diskSizeMB": shown.disk_mb if shown else 0,
        "public": template.public,
        "aliases": list(template.aliases),
        "names": list(template.aliases),
        "createdAt": rfc3339(template.created_at),
        "updatedAt": rfc3339(template.updated_at),
        "createdBy": None,
        "lastSpawnedAt": rfc3339(template.last_spawned_at) if template.last_spawned_at else None,
        "spawnCount": template.spawn_count,
        "buildCount": len(all_builds),
        "envdVersion": shown.envd_version if shown else "",
        "buildStatus": str(_status(current, latest)),
    }
    if builds is not None:
        body["builds"] = [_build_json(build) for build in builds]
    return body


async def list_templates(store: Store, team: Team) -> list[dict[str, Any]]:
    return [await template_json(store, t) for t in await store.list_templates(team.id, TemplateKind.TEMPLATE)]


async def list_templates_page(
    store: Store, team: Team, limit: int, token: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """``GET /v2/templates``: newest first, ``X-Next-Token`` pages (the cursor of ``listing``)."""
    if not 1 <= limit <= 100:
        raise ApiError(400, "limit must be between 1 and 100")
    templates = await store.list_templates(team.id, TemplateKind.TEMPLATE)
    templates.sort(key=lambda template: (template.created_at, template.id), reverse=True)
    if token:
        cursor = Cursor.decode(token)
        templates = [t for t in templates if (t.created_at, t.id) < (cursor.started_at, cursor.item_id)]
    page = templates[:limit]
    next_token = Cursor(page[-1].created_at, page[-1].id, False).encode() if len(templates) > limit else None
    return [await template_json(store, template) for template in page], next_token


async def alias_lookup(store: Store, team: Team, alias: str) -> dict[str, Any]:
    """``GET /templates/aliases/{alias}``: 200 own or public, 403 someone else's, 404 none."""
    ref = parse_template_ref(alias)
    template = await store.find_template(ref.name)
    if template is None or template.id == ref.name:  # an id is not an alias
        raise ApiError(404, f'Template alias "{alias}" not found')
    if template.team_id != team.id and not template.public:
        raise ApiError(403, f'Template alias "{alias}" belongs to another team')
    return {"templateID": template.id, "public": template.public}


async def delete(plane: ControlPlane, team: Team, reference: str) -> None:
    """``DELETE /templates/{id}``: see the module docstring; 404 when not the team's."""
    template = await find_own(plane.store, team, reference)
    builds = await plane.store.list_builds(template.id)
    if not await plane.store.delete_template(template.id):
        raise template_not_found(reference)
    await cancel_unfinished(plane, builds)
    plane.gc.released(f"{template.kind} {template.id} ({', '.join(template.aliases) or 'no name'}) deleted")


# -- tags ------------------------------------------------------------------------------------------


def _tags(body: Body, name: str) -> list[str]:
    tags = body.texts(name)
    if not tags:
        raise bad_request(f'Invalid request body: "{name}" must list at least one tag')
    checked = []
    for tag in tags:
        ref = parse_template_ref(f"t:{tag}")
        checked.append(ref.tag or DEFAULT_TAG)
    return list(dict.fromkeys(checked))


async def assign_tags(plane: ControlPlane, team: Team, body: Body) -> dict[str, Any]:
    """``POST /templates/tags {target: "name[:tag]", tags}`` -> 201 ``{tags, buildID}``: the
    build ``target`` names gets every tag (``default`` makes it the current build)."""
    target = body.text("target", required=True) or ""
    tags = _tags(body, "tags")
    ref = parse_template_ref(target)
    template = await find_own(plane.store, team, ref.name)
    _, build = await plane.resolve_template(team, f"{template.id}:{ref.tag}" if ref.tag else template.id)
    await plane.store.assign_tags(template.id, build.build_id, tags, utcnow())
    plane.gc.released(f"tags {', '.join(tags)} of template {template.id} moved to build {build.build_id}")
    return {"tags": tags, "buildID": build.build_id}


async def remove_tags(plane: ControlPlane, team: Team, body: Body) -> None:
    """``DELETE /templates/tags {name, tags}`` -> 204; 404 when none of the tags is there."""
    name = body.text("name", required=True) or ""
    tags = _tags(body, "tags")
    if DEFAULT_TAG in tags:
        raise bad_request(
            f'The "{DEFAULT_TAG}" tag is the template\'s current build: it is replaced by a new build, '
            "not removed"
        )
    template = await find_own(plane.store, team, name)
    removed = await plane.store.remove_tags(template.id, tags)
    if not removed:
        raise ApiError(404, f'Template "{name}" has none of the tags {", ".join(tags)}')
    plane.gc.released(f"tags {', '.join(removed)} of template {template.id} removed")


async def list_tags(plane: ControlPlane, team: Team, reference: str) -> list[dict[str, Any]]:
    """``GET /templates/{id}/tags`` -> ``[{tag, buildID, createdAt}]``, ``default`` first."""
    template = await find_own(plane.store, team, reference)
    return [
        {"tag": tag.tag, "buildID": tag.build_id, "createdAt": rfc3339(tag.created_at)}
        for tag in await plane.store.list_tags(template.id)
    ]
