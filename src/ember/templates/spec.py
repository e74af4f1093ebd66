"""What a template build is asked to do, and how its layers are named in the cache.

A template is a source (an OCI image, or an existing template's build) plus steps, each of
E2B's instruction types::

    RUN      [cmd, user?]                 run in the guest with bash -l -c, as user
    COPY     [src, dest, user?, mode?]    files from the uploaded tar (keyed by filesHash)
    ENV      [key, value, key, value...]  environment of every later step and of the sandbox
    WORKDIR  [path]                       working directory of every later step and of the sandbox
    USER     [name]                       user of every later step and of the sandbox

then a start command (left running in the snapshot) and a ready command (retried until it
succeeds). Steps are named as the SDK names them in errors: ``base`` for the source,
``1``..``N`` for the steps, ``finalize`` for the start/ready part.

Layer keys (facts 1.5): the cache is indexed by SHA-256 hex of ``baseKey;key1;key2...``;
each layer's hash is chained from its parent's, so an unchanged prefix of steps maps to
the same hashes and is reused without booting anything. A step's key is its type, its
arguments and, for COPY, the hash of its files; ``force`` skips the cache from that step on.
"""

from __future__ import annotations

import enum
import hashlib
import json
import posixpath
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ember.errors import UsageError

HASHING_VERSION = "v2"
BASE_STEP = "base"
FINALIZE_STEP = "finalize"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_USER = re.compile(r"[a-z_][a-z0-9_-]*[$]?")
_FILES_HASH = re.compile(r"[0-9a-f]{64}")


class StepType(enum.StrEnum):
    RUN = "RUN"
    COPY = "COPY"
    ENV = "ENV"
    WORKDIR = "WORKDIR"
    USER = "USER"


@dataclass(frozen=True)
class Step:
    """One instruction, checked: a step that cannot run is refused before any VM starts."""

    type: StepType
    args: tuple[str, ...]
    files_hash: str | None = None
    force: bool = False

    @classmethod
    def parse(
        cls, kind: str, args: Sequence[str], files_hash: str | None = None, force: bool = False
    ) -> Step:
        try:
            step_type = StepType(kind.upper())
        except ValueError:
            raise UsageError(
                f"unknown step type {kind!r}: use one of {', '.join(t.value for t in StepType)}"
            ) from None
        step = cls(step_type, tuple(args), files_hash or None, force)
        step._check()
        return step

    def _check(self) -> None:
        args = self.args
        if self.type is StepType.RUN and not (1 <= len(args) <= 2 and args[0].strip()):
            raise UsageError("a RUN step needs a command (and optionally a user)")
        if self.type is StepType.COPY:
            if not 2 <= len(args) <= 4 or not args[0] or not args[1]:
                raise UsageError(
                    "a COPY step needs a source and a destination (and optionally user and mode)"
                )
            if self.files_hash is None or not _FILES_HASH.fullmatch(self.files_hash):
                raise UsageError("a COPY step needs the filesHash of its uploaded files (64 hex digits)")
            if len(args) == 4 and args[3] and not re.fullmatch(r"0?[0-7]{3,4}", args[3]):
                raise UsageError(f"COPY mode {args[3]!r} is not an octal file mode")
        if self.type is StepType.ENV:
            if not args or len(args) % 2:
                raise UsageError("an ENV step needs key/value pairs")
            for key in args[::2]:
                if not _ENV_NAME.fullmatch(key):
                    raise UsageError(f"ENV name {key!r} is not a valid environment variable name")
        if self.type is StepType.WORKDIR and not (len(args) == 1 and posixpath.isabs(args[0])):
            raise UsageError("a WORKDIR step needs one absolute path")
        if self.type is StepType.USER and not (len(args) == 1 and _USER.fullmatch(args[0])):
            raise UsageError(f"a USER step needs one user name, not {list(args)!r}")
        if self.type in (StepType.RUN, StepType.COPY):
            user = self.user
            if user is not None and not _USER.fullmatch(user):
                raise UsageError(f"user {user!r} of a {self.type.value} step is not a valid user name")

    @property
    def user(self) -> str | None:
        """The step's own user (RUN's second argument, COPY's third), if it names one."""
        index = {StepType.RUN: 1, StepType.COPY: 2}.get(self.type)
        if index is None or len(self.args) <= index or not self.args[index]:
            return None
        return self.args[index]

    @property
    def needs_vm(self) -> bool:
        """ENV, WORKDIR and USER change only what later steps and the sandbox run with."""
        return self.type in (StepType.RUN, StepType.COPY)

    def key(self) -> str:
        return json.dumps([self.type.value, list(self.args), self.files_hash or ""], separators=(",", ":"))


@dataclass(frozen=True)
class FromImage:
    """An OCI image: a registry name (``python:3.12``), ``oci:<dir>[:tag]`` or ``docker-archive:<tar>``."""

    reference: str
    username: str | None = None
    password: str | None = None

    def key(self) -> str:
        return f"image:{self.reference}"


@dataclass(frozen=True)
class FromTemplate:
    """An existing template's build: its snapshot is resumed and the steps run on top."""

    build_id: uuid.UUID
    alias: str = ""

    def key(self) -> str:
        return f"template:{self.build_id}"


@dataclass(frozen=True)
class TemplateSpec:
    """A whole build request (``TemplateService/TemplateCreate``, in ember's terms)."""

    template_id: str
    build_id: uuid.UUID
    source: FromImage | FromTemplate
    steps: tuple[Step, ...] = ()
    start_cmd: str = ""
    ready_cmd: str = ""
    force: bool = False
    vcpu: int = 2
    memory_mb: int = 1024
    disk_mb: int = 1024
    cache_scope: str = ""
    env: Mapping[str, str] = field(default_factory=dict)


def layer_hash(parent: str, step: Step) -> str:
    """The cache key of the layer made by ``step`` on top of the layer whose key is ``parent``."""
    return hashlib.sha256(f"{parent};{step.key()}".encode()).hexdigest()


def base_hash(source: FromImage | FromTemplate, machine: str) -> str:
    """The cache key of the source layer; an image layer also depends on the machine it was booted with."""
    return hashlib.sha256(f"{HASHING_VERSION};{source.key()};{machine}".encode()).hexdigest()


def step_name(index: int) -> str:
    """The SDK's name of step ``index`` (0-based over the steps): ``1`` for the first."""
    return str(index + 1)
