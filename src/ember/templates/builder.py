"""Building a template: its source layer, one layer per step, then the start/ready finish.

::

    base      fromTemplate: that build, as is.  fromImage: pulled and unpacked (``image``),
              booted by create-build (envd and init injected) into a first build
    1..N      for each RUN / COPY step: resume the previous layer, run the step through envd
              with the context so far (user, workdir, env), pause into a new layer build.
              ENV, WORKDIR, USER change only that context: they make no VM run, but are part
              of every later layer's key and of the metadata every later build records
    finalize  resume the last layer, start the start command, wait for the ready command,
              pause into the build the caller named: the template's build

Every layer is looked up in the layer cache first (``cache``): a hit is used without booting
a VM. ``force`` (on the template or on a step) skips the cache from that step on. A failing
step ends the build with ``TemplateBuildError`` naming the step the SDK's way (``base``,
``1``..``N``, ``finalize``); whatever failed, no sandbox is left running, and the
template's build does not exist (its claim is released), so no half template is usable.
"""

from __future__ import annotations

import dataclasses
import posixpath
import shlex
import tempfile
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ember.build import Context, Start, TemplateMetadata
from ember.build import FromTemplate as MetadataFromTemplate
from ember.envd.client import EnvdClient
from ember.errors import EmberError
from ember.sandbox import CreateOptions, Node, ResumeOptions, Sandbox, create_build
from ember.sandbox.create import CommandContext, start_and_wait_ready
from ember.templates.cache import LayerCache, files_key, scope_of
from ember.templates.image import pull_rootfs
from ember.templates.spec import (
    BASE_STEP,
    FINALIZE_STEP,
    FromImage,
    FromTemplate,
    Step,
    StepType,
    TemplateSpec,
    base_hash,
    layer_hash,
    step_name,
)

READY_TIMEOUT_S = 300.0
STEP_TIMEOUT_S = 3600.0
DEFAULT_USER = "root"


class TemplateBuildError(EmberError):
    """A template build failed; ``step`` is the SDK's name of the step that did."""

    def __init__(self, step: str, message: str) -> None:
        self.step = step
        super().__init__(message)


@dataclass(frozen=True)
class LogLine:
    """One line of a build's log, as TemplateBuildStatus returns it."""

    message: str
    level: str = "info"
    step: str | None = None


BuildLog = Callable[[LogLine], None]


@dataclass(frozen=True)
class TemplateResult:
    """A finished build: the template's build id, and how many layers came from the cache."""

    build_id: uuid.UUID
    layers_built: int
    layers_cached: int
    metadata: TemplateMetadata
    layer_builds: tuple[uuid.UUID, ...] = field(default_factory=tuple)


@dataclass
class _Layer:
    """Where the build stands: the layer's key, its build, and the context later steps run with."""

    hash: str
    build_id: uuid.UUID
    context: Context


def _command_context(context: Context) -> CommandContext:
    return CommandContext(context.user or DEFAULT_USER, context.workdir, dict(context.env_vars))


def _after(context: Context, step: Step) -> Context:
    """The context once ``step`` ran (ENV adds variables, WORKDIR and USER replace theirs)."""
    if step.type is StepType.ENV:
        pairs = dict(zip(step.args[::2], step.args[1::2], strict=True))
        return dataclasses.replace(context, env_vars={**context.env_vars, **pairs})
    if step.type is StepType.WORKDIR:
        return dataclasses.replace(context, workdir=step.args[0])
    if step.type is StepType.USER:
        return dataclasses.replace(context, user=step.args[0])
    return context


class TemplateBuilder:
    """One template build on a node (see the module docstring); ``cancel`` stops it between steps."""

    def __init__(
        self, node: Node, spec: TemplateSpec, log: BuildLog, cancel: threading.Event | None = None
    ) -> None:
        self.node = node
        self.spec = spec
        self.log = log
        self.cancel = cancel or threading.Event()
        self.cache = LayerCache(node.storage, scope_of(spec.cache_scope))
        self.built = 0
        self.cached = 0
        self.layers: list[uuid.UUID] = []

    def run(self) -> TemplateResult:
        """Build; the template's build (``spec.build_id``) exists exactly when this returns."""
        self.node.claim(
            self.spec.build_id, f"template build of {self.spec.template_id or self.spec.build_id}"
        )
        try:
            layer = self._base()
            force = self.spec.force
            for index, step in enumerate(self.spec.steps):
                self._check_cancelled(step_name(index))
                force = force or step.force
                layer = self._step(index, step, layer, force)
            metadata = self._finalize(layer)
        except BaseException:
            self.node.release_claim(self.spec.build_id)
            raise
        self.log(LogLine(f"template build {self.spec.build_id} is ready", step=FINALIZE_STEP))
        return TemplateResult(self.spec.build_id, self.built, self.cached, metadata, tuple(self.layers))

    def _check_cancelled(self, step: str) -> None:
        if self.cancel.is_set():
            raise TemplateBuildError(step, "the build was cancelled")

    # -- base --------------------------------------------------------------------------------

    def _base(self) -> _Layer:
        source = self.spec.source
        machine = f"{self.spec.vcpu}:{self.spec.memory_mb}:{self.spec.disk_mb}"
        key = base_hash(source, machine if isinstance(source, FromImage) else "")
        if isinstance(source, FromTemplate):
            try:
                info = self.node.build_info(source.build_id)
            except EmberError as exc:
                raise TemplateBuildError(
                    BASE_STEP, f"the template to build from cannot be used: {exc}"
                ) from exc
            self.log(LogLine(f"building from template build {source.build_id}", step=BASE_STEP))
            return _Layer(key, source.build_id, info.metadata.context)
        cached = None if self.spec.force else self.cache.lookup(key)
        if cached is not None:
            self.cached += 1
            self.log(LogLine(f"CACHED image {source.reference} (build {cached})", step=BASE_STEP))
            return _Layer(key, cached, self.node.build_info(cached).metadata.context)
        build = uuid.uuid4()
        self.log(LogLine(f"pulling image {source.reference}", step=BASE_STEP))
        try:
            with tempfile.TemporaryDirectory(prefix="image-", dir=self._scratch()) as scratch:
                rootfs = pull_rootfs(source, Path(scratch))
                self.log(LogLine(f"booting {source.reference} into build {build}", step=BASE_STEP))
                create_build(
                    self.node,
                    CreateOptions(
                        to_build=build,
                        image=rootfs,
                        vcpu=self.spec.vcpu,
                        memory_mb=self.spec.memory_mb,
                        disk_mb=self.spec.disk_mb,
                        hugepages=False,
                    ),
                )
        except EmberError as exc:
            raise TemplateBuildError(
                BASE_STEP, f"building from image {source.reference} failed: {exc}"
            ) from exc
        self.built += 1
        self.layers.append(build)
        self.cache.record(key, build)
        return _Layer(key, build, Context())

    def _scratch(self) -> Path:
        directory = self.node.env.orchestrator_base_path / "build-templates"
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        return directory

    # -- steps -------------------------------------------------------------------------------

    def _step(self, index: int, step: Step, layer: _Layer, force: bool) -> _Layer:
        name = step_name(index)
        key = layer_hash(layer.hash, step)
        context = _after(layer.context, step)
        if not step.needs_vm:
            self.log(LogLine(f"{step.type.value} {' '.join(step.args)}", step=name))
            return _Layer(key, layer.build_id, context)
        cached = None if force else self.cache.lookup(key)
        if cached is not None:
            self.cached += 1
            self.log(LogLine(f"CACHED {step.type.value} {' '.join(step.args)} (build {cached})", step=name))
            return _Layer(key, cached, context)
        self.log(LogLine(f"{step.type.value} {' '.join(step.args)}", step=name))
        child = uuid.uuid4()
        metadata = self._metadata(layer.build_id, context, start=None)
        try:
            with self._resumed(layer, name) as sandbox:
                client = sandbox.envd
                if step.type is StepType.RUN:
                    self._run(client, step, context, name)
                else:
                    self._copy(client, step, context, name)
                sandbox.check()
                sandbox.pause(child, metadata=metadata)
        except TemplateBuildError:
            raise
        except EmberError as exc:
            raise TemplateBuildError(name, f"step {name} ({step.type.value}) failed: {exc}") from exc
        self.built += 1
        self.layers.append(child)
        self.cache.record(key, child)
        return _Layer(key, child, context)

    def _resumed(self, layer: _Layer, step: str) -> Sandbox:
        try:
            return Sandbox.resume(
                self.node, ResumeOptions(layer.build_id, env_vars=dict(layer.context.env_vars))
            )
        except EmberError as exc:
            raise TemplateBuildError(step, f"cannot resume layer {layer.build_id}: {exc}") from exc

    def _run(self, client: EnvdClient, step: Step, context: Context, name: str) -> None:
        command = _command_context(context)
        user = step.user or command.user
        if command.cwd:
            client.run(f"mkdir -p {shlex.quote(command.cwd)}", timeout_s=60)
        result = client.run(
            step.args[0],
            user=user,
            cwd=command.cwd,
            envs=command.envs,
            timeout_s=STEP_TIMEOUT_S,
            on_stdout=self._relay(name, "info"),
            on_stderr=self._relay(name, "info"),
        )
        if result.exit_code != 0:
            tail = " / ".join(
                (result.stderr or result.stdout).decode(errors="replace").strip().splitlines()[-3:]
            )
            raise TemplateBuildError(
                name,
                f"step {name} RUN {step.args[0]!r} exited with code {result.exit_code}: "
                f"{tail or 'no output'}",
            )

    def _relay(self, name: str, level: str) -> Callable[[bytes], None]:
        pending = bytearray()

        def write(data: bytes) -> None:
            pending.extend(data)
            *lines, rest = pending.split(b"\n")
            pending[:] = rest
            for line in lines:
                self.log(LogLine(line.decode(errors="replace"), level=level, step=name))

        return write

    def _copy(self, client: EnvdClient, step: Step, context: Context, name: str) -> None:
        """Unpack the step's uploaded tar in the guest, then copy ``src`` to ``dest`` as Docker's COPY."""
        assert step.files_hash is not None
        key = files_key(self.cache.scope, step.files_hash)
        if not self.node.storage.exists(key):
            raise TemplateBuildError(
                name, f"step {name} COPY: the files (hash {step.files_hash}) were never uploaded"
            )
        src, dest = step.args[0], step.args[1]
        user = step.user or context.user or DEFAULT_USER
        mode = step.args[3] if len(step.args) > 3 and step.args[3] else ""
        if not posixpath.isabs(dest):
            dest = posixpath.join(context.workdir or "/", dest)
        staging = f"/tmp/.ember-copy-{step.files_hash[:16]}"
        client.write_file(f"{staging}.tar", self.node.storage.get(key))
        script = _copy_script(staging, src, dest, user, mode)
        result = client.run(script, timeout_s=STEP_TIMEOUT_S)
        if result.exit_code != 0:
            tail = " / ".join(
                (result.stderr or result.stdout).decode(errors="replace").strip().splitlines()[-3:]
            )
            raise TemplateBuildError(name, f"step {name} COPY {src} {dest} failed: {tail or 'no output'}")

    # -- finalize ----------------------------------------------------------------------------

    def _finalize(self, layer: _Layer) -> TemplateMetadata:
        self._check_cancelled(FINALIZE_STEP)
        spec = self.spec
        start = (
            Start(spec.start_cmd, spec.ready_cmd, layer.context) if spec.start_cmd or spec.ready_cmd else None
        )
        metadata = self._metadata(layer.build_id, layer.context, start)
        self.log(LogLine("finalizing the template", step=FINALIZE_STEP))
        try:
            with self._resumed(layer, FINALIZE_STEP) as sandbox:
                if spec.start_cmd or spec.ready_cmd:
                    start_and_wait_ready(
                        sandbox.envd,
                        spec.start_cmd,
                        spec.ready_cmd,
                        READY_TIMEOUT_S,
                        self.node,
                        _command_context(layer.context),
                    )
                sandbox.check()
                result = sandbox.pause(spec.build_id, claimed=True, metadata=metadata)
        except TemplateBuildError:
            raise
        except EmberError as exc:
            raise TemplateBuildError(FINALIZE_STEP, f"finalizing the template failed: {exc}") from exc
        self.built += 1
        return result.metadata

    def _metadata(self, parent: uuid.UUID, context: Context, start: Start | None) -> TemplateMetadata:
        """What a layer built on ``parent`` records: the parent's, with this build's context and origin."""
        parent_metadata = self.node.build_info(parent).metadata
        base = parent_metadata.same_version_template(parent_metadata.template)
        source = self.spec.source
        return dataclasses.replace(
            base,
            context=context,
            start=start,
            from_image=source.reference if isinstance(source, FromImage) else base.from_image,
            from_template=MetadataFromTemplate(source.alias, str(source.build_id))
            if isinstance(source, FromTemplate)
            else base.from_template,
        )


def _copy_script(staging: str, src: str, dest: str, user: str, mode: str) -> str:
    """The guest-side COPY: unpack, resolve ``src`` (a glob relative to the context), copy, own, chmod.

    Docker's rules: a single file to a path ending in ``/`` lands inside it; a directory's
    *contents* are copied; several sources need a directory destination.
    """
    quoted = shlex.quote
    chmod = f'chmod -R {quoted(mode)} "$target"' if mode else "true"
    return "\n".join(
        [
            "set -e",
            f"staging={quoted(staging)}; dest={quoted(dest)}",
            'rm -rf "$staging"; mkdir -p "$staging"',
            'tar -xf "$staging.tar" -C "$staging"; rm -f "$staging.tar"',
            'cd "$staging"',
            f"set -- {_glob_words(src)}",
            '[ -e "$1" ] || { echo "COPY source not found in the uploaded files" >&2; exit 1; }',
            'if [ "$#" -gt 1 ] || [ "${dest%/}" != "$dest" ]; then mkdir -p "$dest"; fi',
            'for item in "$@"; do',
            '  if [ -d "$item" ]; then mkdir -p "$dest"; cp -a "$item/." "$dest/"; target="$dest"',
            '  elif [ -d "$dest" ]; then cp -a "$item" "$dest/"; target="$dest/$(basename "$item")"',
            '  else mkdir -p "$(dirname "$dest")"; cp -a "$item" "$dest"; target="$dest"; fi',
            f'  chown -R {quoted(user)}: "$target"',
            f"  {chmod}",
            "done",
            'cd /; rm -rf "$staging"',
        ]
    )


def _glob_words(pattern: str) -> str:
    """``pattern`` for the shell: literal parts quoted, ``*``, ``?`` and ``[...]`` left to expand."""
    words = []
    literal = ""
    for char in pattern.lstrip("/") or ".":
        if char in "*?[]":
            if literal:
                words.append(shlex.quote(literal))
                literal = ""
            words.append(char)
        else:
            literal += char
    if literal:
        words.append(shlex.quote(literal))
    return "".join(words)


def build_template(
    node: Node, spec: TemplateSpec, log: BuildLog, cancel: threading.Event | None = None
) -> TemplateResult:
    """Build ``spec`` on ``node`` (module docstring); ``TemplateBuildError`` names the failing step."""
    return TemplateBuilder(node, spec, log, cancel).run()
