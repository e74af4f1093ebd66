"""metadata.json, the record that makes a build complete (facts file sections 1.4 and 8.9).

The original decodes the version first and only trusts the rest of the document when the
version is 2 or more: anything else (missing, 0, 1, "1", 1.0, null, a bool, negative)
means the deprecated format, and every other field is discarded. ember keeps that rule
so a build written by either system reads the same in both. A deprecated document is
not a build anyone can resume, though: ``TemplateMetadata.require_resumable`` says so, and
a current one (version 2 or more) without ``template.build_id`` is refused when parsed.

Field order and names follow the original's JSON encoder (struct declaration order,
compact, omitempty where it has it), so a metadata.json that ember writes diffs cleanly
against one the original writes.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from ember.errors import MetadataError

CURRENT_VERSION = 2
DEPRECATED_VERSION = 1


@dataclass(frozen=True)
class TemplateInfo:
    build_id: str = ""
    kernel_version: str = ""
    firecracker_version: str = ""


@dataclass(frozen=True)
class Context:
    user: str = ""
    workdir: str | None = None
    env_vars: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Start:
    start_command: str = ""
    ready_command: str = ""
    context: Context = field(default_factory=Context)


@dataclass(frozen=True)
class FromTemplate:
    alias: str = ""
    build_id: str = ""


@dataclass(frozen=True)
class MemoryPrefetch:
    """Pages every resume touches, in first-access order, in units of ``block_size``."""

    indices: tuple[int, ...] = ()
    access_types: tuple[str, ...] = ()
    block_size: int = 0


@dataclass(frozen=True)
class TemplateMetadata:
    version: int = DEPRECATED_VERSION
    template: TemplateInfo = field(default_factory=TemplateInfo)
    context: Context = field(default_factory=Context)
    start: Start | None = None
    from_image: str = ""
    from_template: FromTemplate | None = None
    prefetch: MemoryPrefetch | None = None
    cmdline_args: dict[str, str] = field(default_factory=dict)
    filesystem_only: bool = False
    fs_quiesced: bool = False

    def require_resumable(self, build_id: uuid.UUID | str) -> TemplateMetadata:
        """``self`` if it describes a build (it has a template section); ``MetadataError`` if not.

        The deprecated format keeps nothing but its version (facts file 1.4), so an empty
        ``{}`` parses; resuming from it would then guess every field and fail far from here.
        """
        if self.version <= DEPRECATED_VERSION or not self.template.build_id:
            raise _no_template(build_id)
        return self

    def same_version_template(self, template: TemplateInfo) -> TemplateMetadata:
        """The metadata of a build paused from this one: what was recorded about this
        build's own snapshot (prefetch, filesystem-only, quiesce) no longer holds."""
        return replace(self, template=template, prefetch=None, filesystem_only=False, fs_quiesced=False)

    def to_json(self) -> bytes:
        version = max(self.version, CURRENT_VERSION) if self.filesystem_only else self.version
        document: dict[str, Any] = {"version": version}
        if version < CURRENT_VERSION:
            return _encode(document)
        document["template"] = {
            "build_id": self.template.build_id,
            "kernel_version": self.template.kernel_version,
            "firecracker_version": self.template.firecracker_version,
        }
        document["context"] = _context_json(self.context)
        if self.start is not None:
            document["start"] = {
                "start_command": self.start.start_command,
                "ready_command": self.start.ready_command,
                "context": _context_json(self.start.context),
            }
        if self.from_image:
            document["from_image"] = self.from_image
        if self.from_template is not None:
            document["from_template"] = {
                "alias": self.from_template.alias,
                "build_id": self.from_template.build_id,
            }
        if self.prefetch is not None:
            document["prefetch"] = {
                "memory": {
                    "indices": list(self.prefetch.indices),
                    "access_types": list(self.prefetch.access_types),
                    "block_size": self.prefetch.block_size,
                }
            }
        if self.cmdline_args:
            document["cmdline_args"] = dict(self.cmdline_args)
        if self.filesystem_only:
            document["filesystem_only"] = True
        if self.fs_quiesced:
            document["fs_quiesced"] = True
        return _encode(document)


def parse_metadata(data: bytes, build_id: uuid.UUID | str | None = None) -> TemplateMetadata:
    """Decode metadata.json bytes; raises MetadataError with the original's wording.

    A version 2+ document without ``template.build_id`` is refused (``build_id`` names the
    build in that message); a deprecated one yields only its version, as the original's does.
    """
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MetadataError(
            f"error unmarshaling template version: {exc}; metadata.json is not valid JSON"
        ) from exc
    if not isinstance(document, dict):
        raise MetadataError("error unmarshaling template version: metadata.json must be a JSON object")
    version = _version_of(document.get("version"))
    if version <= DEPRECATED_VERSION:
        return TemplateMetadata(version=DEPRECATED_VERSION)
    try:
        metadata = _decode_v2(document, version)
    except (TypeError, ValueError, AttributeError) as exc:
        raise MetadataError(f"error unmarshaling template metadata: {exc}") from exc
    if not metadata.template.build_id:
        raise _no_template(build_id)
    return metadata


def _no_template(build_id: uuid.UUID | str | None) -> MetadataError:
    subject = "metadata.json" if build_id is None else f"metadata.json of build {build_id}"
    return MetadataError(
        f"{subject} has no template section: the build is corrupt or not a build; "
        "pick another build or copy it again"
    )


def _version_of(raw: object) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return DEPRECATED_VERSION
    if isinstance(raw, float) and not raw.is_integer():
        raise MetadataError(f"error unmarshaling template version: version {raw} is not a whole number")
    return int(raw)


def _decode_v2(document: dict[str, Any], version: int) -> TemplateMetadata:
    template = _obj(document, "template")
    start = document.get("start")
    from_template = document.get("from_template")
    prefetch = document.get("prefetch")
    memory = _obj(prefetch, "memory") if isinstance(prefetch, dict) else None
    if prefetch is not None and not isinstance(prefetch, dict):
        raise TypeError("prefetch must be an object")
    return TemplateMetadata(
        version=version,
        template=TemplateInfo(
            build_id=_str(template, "build_id"),
            kernel_version=_str(template, "kernel_version"),
            firecracker_version=_str(template, "firecracker_version"),
        ),
        context=_context(_obj(document, "context")),
        start=None
        if start is None
        else Start(
            start_command=_str(_obj(document, "start"), "start_command"),
            ready_command=_str(_obj(document, "start"), "ready_command"),
            context=_context(_obj(_obj(document, "start"), "context")),
        ),
        from_image=_str(document, "from_image"),
        from_template=None
        if from_template is None
        else FromTemplate(
            alias=_str(_obj(document, "from_template"), "alias"),
            build_id=_str(_obj(document, "from_template"), "build_id"),
        ),
        prefetch=None
        if not memory
        else MemoryPrefetch(
            indices=tuple(_uint(i) for i in memory.get("indices") or ()),
            access_types=tuple(_as_str(t) for t in memory.get("access_types") or ()),
            block_size=_uint(memory.get("block_size", 0)),
        ),
        cmdline_args=_str_map(document, "cmdline_args"),
        filesystem_only=_bool(document, "filesystem_only"),
        fs_quiesced=_bool(document, "fs_quiesced"),
    )


def _context(raw: dict[str, Any]) -> Context:
    workdir = raw.get("workdir")
    return Context(
        user=_str(raw, "user"),
        workdir=None if workdir is None else _as_str(workdir),
        env_vars=_str_map(raw, "env_vars"),
    )


def _context_json(context: Context) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if context.user:
        out["user"] = context.user
    if context.workdir is not None:
        out["workdir"] = context.workdir
    if context.env_vars:
        out["env_vars"] = dict(context.env_vars)
    return out


def _obj(parent: dict[str, Any], key: str) -> dict[str, Any]:
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TypeError(f"{key} must be an object, got {type(value).__name__}")
    return value


def _str(parent: dict[str, Any], key: str) -> str:
    value = parent.get(key)
    return "" if value is None else _as_str(value)


def _as_str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _uint(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError(f"expected a non-negative integer, got {value!r}")
    return value


def _bool(parent: dict[str, Any], key: str) -> bool:
    value = parent.get(key, False)
    if not isinstance(value, bool):
        raise TypeError(f"{key} must be true or false, got {value!r}")
    return value


def _str_map(parent: dict[str, Any], key: str) -> dict[str, str]:
    return {_as_str(k): _as_str(v) for k, v in _obj(parent, key).items()}


def _encode(document: dict[str, Any]) -> bytes:
    """Compact JSON with the HTML-safe escapes the original's encoder applies."""
    text = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
    for char, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, escaped)
    return text.encode()
