"""Identifiers: sandbox ids, template ids, template references, path ids (E2B's rules).

* A sandbox id is ``i`` followed by 20 characters of ``[a-z0-9]``; a template id is 20 of them.
* A path id may carry the old client-id suffix, ``<id>-<clientID>``: the suffix is dropped.
  More than one ``-``, or characters outside ``[a-z0-9]``, is 400 "Invalid sandbox ID".
* A template reference is ``[namespace/]alias[:tag]``, lower-cased and trimmed; the tag
  ``default`` means no tag.
"""

from __future__ import annotations

import re
import secrets
import uuid
from dataclasses import dataclass

from ember.api.errors import INVALID_SANDBOX_ID, ApiError, bad_request

SANDBOX_PREFIX = "i"
ID_LENGTH = 20
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
DEFAULT_TAG = "default"

_ID = re.compile(r"[a-z0-9]+")
_IDENTIFIER = re.compile(r"[a-z0-9\-_]+")
_TAG = re.compile(r"[a-z0-9\-_.]+")


def _random(length: int) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


def new_sandbox_id() -> str:
    return SANDBOX_PREFIX + _random(ID_LENGTH)


def new_template_id() -> str:
    return _random(ID_LENGTH)


def new_build_id() -> str:
    return str(uuid.uuid4())


def parse_sandbox_id(path_id: str) -> str:
    """The sandbox id a path segment names; raises ApiError 400 "Invalid sandbox ID"."""
    parts = path_id.split("-")
    if len(parts) > 2 or not _ID.fullmatch(parts[0]):
        raise ApiError(400, INVALID_SANDBOX_ID)
    return parts[0]


@dataclass(frozen=True)
class TemplateRef:
    """A parsed template reference; ``name`` is ``namespace/alias`` or ``alias``."""

    namespace: str | None
    alias: str
    tag: str | None

    @property
    def name(self) -> str:
        return f"{self.namespace}/{self.alias}" if self.namespace else self.alias


def parse_template_ref(reference: str) -> TemplateRef:
    """``[namespace/]alias[:tag]``; raises ApiError 400 for anything else."""
    text = reference.strip().lower()
    namespace: str | None = None
    if "/" in text:
        namespace, _, text = text.partition("/")
        if not _IDENTIFIER.fullmatch(namespace):
            raise bad_request(f'Invalid template reference "{reference}": bad namespace "{namespace}"')
    alias, colon, tag = text.partition(":")
    if not _IDENTIFIER.fullmatch(alias):
        raise bad_request(
            f'Invalid template reference "{reference}": use lower-case letters, digits, "-" and "_"'
        )
    if colon and not _TAG.fullmatch(tag):
        raise bad_request(f'Invalid template reference "{reference}": bad tag "{tag}"')
    return TemplateRef(namespace, alias, tag if colon and tag != DEFAULT_TAG else None)


def check_alias(alias: str) -> str:
    """A name to register (no tag): the lower-cased, trimmed reference; raises ApiError 400."""
    ref = parse_template_ref(alias)
    if ref.tag is not None or ":" in alias:
        raise bad_request(f'Invalid name "{alias}": a name carries no tag')
    return ref.name
