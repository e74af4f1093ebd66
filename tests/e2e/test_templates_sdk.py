"""E2B's Python SDK, unchanged, builds templates against a real ``ember serve``: ``Template()``
from the ``base`` template, a COPY of local files, RUN steps, ENV / WORKDIR / USER, a start and a
ready command, built with ``Template.build`` and started with ``Sandbox.create("<name>")``.

Four builds in all, against one serve (a template step is a QEMU/TCG resume, run and pause, 10-30
s each): the template built once (``built``), the same template again (every step from the
layer cache), again with ``skip_cache()`` before its last step (only that step runs), and a
template whose RUN step fails. The build times are printed, never asserted.

The guest is Debian minbase: python3 but no pip, and no internet. The template installs a small
pure-Python wheel the test writes by hand (a zip, as the wheel format describes it) with pip's
own wheel from the host's ``ensurepip``, run as a zipapp, offline. Debian marks its Python
externally managed (PEP 668), so pip needs ``--break-system-packages`` to install into
/usr/local as a Dockerfile's ``RUN pip install`` would.

Every template the module makes is named with a fresh suffix (the serve's storage, with its
layer cache, outlives the session; fresh files make the first build a real one) and deleted at
the end, so the collection at the end of the session reclaims its builds.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.resources
import os
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import e2b
import pytest
from e2b import Template, wait_for_port
from e2b.exceptions import BuildException
from e2b.template.logger import LogEntry, LogEntryEnd, LogEntryStart
from serve_harness import Sandboxes, ServeProcess, sdk_environment

pytestmark = [pytest.mark.vm, pytest.mark.root]

PORT = 8123
PACKAGE = "emberhello"
APP = "/opt/app"
USER = "builder"
HOME = f"/home/{USER}"
SUFFIX = " (served)"
INSTALL_CMD = (
    f"python3 {APP}/wheels/{{pip}}/pip install --no-index --no-cache-dir --break-system-packages "
    f"{APP}/wheels/{PACKAGE}-1.0-py3-none-any.whl"
)
OUTPUT_LINES = 250  # more than one status answer carries (100): the SDK pages through the log
# the SDK joins a list with " && "
SETUP_CMDS = [INSTALL_CMD, f"useradd -m {USER}", f"seq -f 'output line %g' {OUTPUT_LINES}"]
STAMP_CMD = "date +%s%N > built-at"  # relative: in the WORKDIR, as the USER set before it
STAMP = f"{HOME}/built-at"
START_CMD = f"python3 {APP}/server.py"
FAIL_CMD = "echo about to fail >&2; exit 3"
# What the node logs for a step that runs / one taken from the layer cache (ember.templates.builder).
STEP_LINE = re.compile(r"^(CACHED )?(RUN|COPY) (.*?)(?: \(build [0-9a-f-]{36}\))?$")
SERVER = f"""\
import http.server
import os

import {PACKAGE}

with open("/tmp/server.pid", "w") as handle:
    handle.write(str(os.getpid()))


class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ({PACKAGE}.greeting() + os.environ.get("GREETING_SUFFIX", "")).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


http.server.HTTPServer(("0.0.0.0", {PORT}), Hello).serve_forever()
"""


def pip_wheel() -> Path:
    """pip's wheel as the host's ``ensurepip`` bundles it (Debian's system Python drops it)."""
    bundled = importlib.resources.files("ensurepip") / "_bundled"
    found = sorted(Path(str(bundled)).glob("pip-*-py3-none-any.whl")) if bundled.is_dir() else []
    if not found:
        pytest.skip(f"this Python's ensurepip bundles no pip wheel ({bundled}): nothing to install pip from")
    return found[-1]


def write_wheel(directory: Path, name: str, version: str, modules: dict[str, str]) -> Path:
    """A pure-Python wheel of ``modules`` ({module name: source}): a zip with the three
    ``.dist-info`` files pip reads (METADATA, WHEEL, and RECORD listing every file's hash)."""
    info = f"{name}-{version}.dist-info"
    files = {f"{module}.py": source.encode() for module, source in modules.items()}
    files[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
    files[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: ember-e2e\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel


@dataclass
class Project:
    """The build context: ``app/`` (copied to APP), the files' digests, this run's greeting."""

    root: Path
    greeting: str
    pip: str
    digests: dict[str, str]  # path under APP -> sha256
    names: list[str] = field(default_factory=list)  # the templates made, deleted at the end

    @property
    def setup(self) -> str:
        return " && ".join(SETUP_CMDS).format(pip=self.pip)

    def template(self, *, skip_cache_last: bool = False) -> Any:
        """COPY app, RUN pip install + useradd, ENV, WORKDIR, USER, RUN a stamp; the server as the
        start command, ready once its port listens."""
        steps = (
            Template(file_context_path=self.root)
            .from_template("base")
            .copy("app", f"{APP}/")
            .run_cmd([command.format(pip=self.pip) for command in SETUP_CMDS])
            .set_envs({"GREETING_SUFFIX": SUFFIX})
            .set_workdir(HOME)
            .set_user(USER)
        )
        if skip_cache_last:
            steps = steps.skip_cache()
        return steps.run_cmd(STAMP_CMD).set_start_cmd(START_CMD, wait_for_port(PORT))

    def name(self, what: str) -> str:
        made = f"e2e-tpl-{what}-{self.greeting.rsplit('-', 1)[-1]}"
        self.names.append(made)
        return made


def make_project(root: Path) -> Project:
    nonce = uuid.uuid4().hex[:10]
    greeting = f"hello from the wheel-{nonce}"
    app = root / "app"
    (app / "wheels").mkdir(parents=True)
    (app / "data" / "nested" / "deep").mkdir(parents=True)
    (app / "bin").mkdir()
    (app / "server.py").write_text(SERVER)
    (app / "data" / "blob.bin").write_bytes(os.urandom(300_000) + bytes(range(256)) * 64)
    notes = app / "data" / "nested" / "deep" / "notes.txt"
    notes.write_text(f"nested notes {nonce}\n" * 50)
    notes.chmod(0o644)  # modes are copied as they are here, whatever the umask
    (app / "data" / "nested" / "empty.txt").write_bytes(b"")
    tool = app / "bin" / "tool.sh"
    tool.write_text("#!/bin/sh\necho tool ran\n")
    tool.chmod(0o755)
    write_wheel(
        app / "wheels",
        PACKAGE,
        "1.0",
        {PACKAGE: f"GREETING = {greeting!r}\n\n\ndef greeting():\n    return GREETING\n"},
    )
    pip = pip_wheel()
    shutil.copyfile(pip, app / "wheels" / pip.name)
    digests = {
        str(path.relative_to(app)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(app.rglob("*"))
        if path.is_file()
    }
    return Project(root, greeting, pip.name, digests)


@dataclass
class Built:
    """One ``Template.build``: its name, the log entries the callback got, the time it took, and
    what its sandbox read from the last step's stamp file."""

    name: str
    logs: list[LogEntry]
    seconds: float = 0.0
    status_while_streaming: str | None = None  # the build's status when its first step's log arrived
    stamp: str = ""

    @property
    def messages(self) -> list[str]:
        return [entry.message for entry in self.logs]

    def steps(self) -> list[tuple[bool, str, str]]:
        """(cached?, RUN/COPY, what) of every VM step the node logged, in order."""
        found = []
        for message in self.messages:
            match = STEP_LINE.match(message)
            if match:
                found.append((match.group(1) is not None, match.group(2), match.group(3).strip()))
        return found


def api_call(env: dict[str, str], method: str, path: str) -> tuple[int, bytes]:
    request = urllib.request.Request(
        env["E2B_API_URL"] + path, method=method, headers={"X-API-KEY": env["E2B_API_KEY"]}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def build(template: Any, name: str, env: dict[str, str]) -> Built:
    """``Template.build`` with a log callback that also asks the API, once, about the build while
    its first step's log is coming in (the callback is handed the build's ids in a log line)."""
    result = Built(name, [])
    ids: dict[str, str] = {}

    def on_log(entry: LogEntry) -> None:
        result.logs.append(entry)
        created = re.search(r"Template created with ID: (\S+), Build ID: (\S+)", entry.message)
        if created:
            ids.update(template=created.group(1), build=created.group(2))
        if result.status_while_streaming is None and ids and STEP_LINE.match(entry.message):
            path = f"/templates/{ids['template']}/builds/{ids['build']}/status?limit=0"
            status = re.search(rb'"status":\s*"(\w+)"', api_call(env, "GET", path)[1])
            result.status_while_streaming = status.group(1).decode() if status else "?"

    started = time.monotonic()
    try:
        Template.build(template, name, on_build_logs=on_log)
    finally:
        result.seconds = time.monotonic() - started
        print(f"Template.build {name}: {result.seconds:.1f} s, {len(result.logs)} log entries")
    return result


def run(sandbox: Any, command: str) -> str:
    result = sandbox.commands.run(command, timeout=120)
    assert result.exit_code == 0, result.stderr
    return str(result.stdout)


@contextlib.contextmanager
def sandbox_of(sandboxes: Sandboxes, name: str) -> Iterator[Any]:
    sandbox = sandboxes.create(template=name)
    try:
        yield sandbox
    finally:
        sandbox.kill()


def stamped(built: Built, tag: str) -> Built:
    """``built`` with the stamp its template's sandbox reads now (before a later build takes the name)."""
    sandboxes = Sandboxes(f"{tag}-{uuid.uuid4().hex[:8]}")
    try:
        with sandbox_of(sandboxes, built.name) as sandbox:
            built.stamp = run(sandbox, f"cat {STAMP}").strip()
    finally:
        sandboxes.cleanup()
    return built


# -- the builds, once each for the module ------------------------------------------------------------


@pytest.fixture(scope="module")
def project(serve: ServeProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    made = make_project(tmp_path_factory.mktemp("template-context"))
    try:
        yield made
    finally:
        for name in made.names:
            code, body = api_call(serve.env, "DELETE", f"/templates/{urllib.parse.quote(name)}")
            if code not in (204, 404):
                print(f"deleting template {name}: {code} {body[:200]!r}")


@pytest.fixture(scope="module")
def built(serve: ServeProcess, project: Project) -> Built:
    with sdk_environment(serve.env):
        return stamped(build(project.template(), project.name("app"), serve.env), "tpl-first")


@pytest.fixture(scope="module")
def rebuilt(serve: ServeProcess, project: Project, built: Built) -> Built:
    with sdk_environment(serve.env):
        return stamped(build(project.template(), built.name, serve.env), "tpl-cached")


@pytest.fixture(scope="module")
def forced(serve: ServeProcess, project: Project, rebuilt: Built) -> Built:
    with sdk_environment(serve.env):
        return stamped(build(project.template(skip_cache_last=True), rebuilt.name, serve.env), "tpl-forced")


# -- the tests ---------------------------------------------------------------------------------------


def test_a_template_builds_with_streamed_logs_and_its_sandbox_has_the_package_and_the_server(
    built: Built, project: Project, sandboxes: Sandboxes
) -> None:
    assert isinstance(built.logs[0], LogEntryStart) and isinstance(built.logs[-1], LogEntryEnd)
    assert built.status_while_streaming == "building", "the step logs came only after the build ended"
    assert built.steps() == [
        (False, "COPY", f"app {APP}/"),
        (False, "RUN", project.setup),
        (False, "RUN", STAMP_CMD),
    ], "\n".join(built.messages)
    messages = built.messages
    assert f"Successfully installed {PACKAGE}-1.0" in messages, "pip's output is not in the build log"
    assert [m for m in messages if m.startswith("output line ")] == [
        f"output line {n}" for n in range(1, OUTPUT_LINES + 1)
    ], "a RUN step's output did not reach the callback once each, in order"
    order = [
        next(i for i, m in enumerate(messages) if m.startswith("COPY ")),
        messages.index(f"RUN {STAMP_CMD}"),
        messages.index("finalizing the template"),
        next(i for i, m in enumerate(messages) if re.fullmatch(r"template build \S+ is ready", m)),
    ]
    assert order == sorted(order), "\n".join(messages)
    assert not [entry for entry in built.logs if entry.level == "error"], "\n".join(messages)

    with sandbox_of(sandboxes, built.name) as sandbox:
        imported = run(sandbox, f"cd / && python3 -c 'import {PACKAGE}; print({PACKAGE}.greeting())'")
        assert imported == project.greeting + "\n"
        pids = run(sandbox, f"pgrep -f '^{START_CMD}$'").split()
        assert len(pids) == 1, pids
        assert run(sandbox, "cat /tmp/server.pid") == pids[0]
        # the start command ran with the template's USER, WORKDIR and ENV, as the stamp step did
        assert run(sandbox, f"ps -o user= -p {pids[0]}; readlink /proc/{pids[0]}/cwd").split() == [USER, HOME]
        assert run(sandbox, f"stat -c %U {STAMP}") == f"{USER}\n"
        fetch = f"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{PORT}/').read().decode())"
        assert run(sandbox, f'python3 -c "{fetch}"') == project.greeting + SUFFIX + "\n"


def test_copied_files_arrive_byte_identical(built: Built, project: Project, sandboxes: Sandboxes) -> None:
    with sandbox_of(sandboxes, built.name) as sandbox:
        listed = run(sandbox, f"cd {APP} && find . -type f -exec sha256sum {{}} +")
        modes = run(sandbox, f"stat -c '%a %U' {APP}/bin/tool.sh {APP}/data/nested/deep/notes.txt")
    found = {line.split(maxsplit=1)[1].removeprefix("./"): line.split()[0] for line in listed.splitlines()}
    assert found == project.digests
    assert {"data/blob.bin", "data/nested/deep/notes.txt", "data/nested/empty.txt"} <= found.keys()
    assert modes.splitlines() == ["755 root", "644 root"]


def test_the_same_template_again_comes_from_the_cache(built: Built, rebuilt: Built, project: Project) -> None:
    print(f"first build {built.seconds:.1f} s, cached rebuild {rebuilt.seconds:.1f} s")
    assert rebuilt.steps() == [
        (True, "COPY", f"app {APP}/"),
        (True, "RUN", project.setup),
        (True, "RUN", STAMP_CMD),
    ], "\n".join(rebuilt.messages)
    assert "Skipping upload of 'app', already cached" in rebuilt.messages
    assert f"Successfully installed {PACKAGE}-1.0" not in rebuilt.messages  # pip did not run again
    assert rebuilt.stamp == built.stamp, "the cached build's sandbox has another stamp: the step ran again"


def test_skip_cache_on_the_last_step_rebuilds_only_that_step(
    built: Built, forced: Built, project: Project, sandboxes: Sandboxes
) -> None:
    print(f"first build {built.seconds:.1f} s, last step forced {forced.seconds:.1f} s")
    assert forced.steps() == [
        (True, "COPY", f"app {APP}/"),
        (True, "RUN", project.setup),
        (False, "RUN", STAMP_CMD),
    ], "\n".join(forced.messages)
    assert f"Successfully installed {PACKAGE}-1.0" not in forced.messages
    assert int(forced.stamp) > int(built.stamp), "the forced step's stamp is not newer than the first build's"
    with sandbox_of(sandboxes, forced.name) as sandbox:
        imported = run(sandbox, f"cd / && python3 -c 'import {PACKAGE}; print({PACKAGE}.GREETING)'")
    assert imported == project.greeting + "\n"


def test_a_failing_run_step_fails_the_build_and_leaves_no_usable_template(
    project: Project, sdk_env: dict[str, str]
) -> None:
    name = project.name("fail")
    failing = Template().from_template("base").run_cmd("echo fine").run_cmd(FAIL_CMD)
    logs: list[LogEntry] = []
    with pytest.raises(BuildException) as caught:
        Template.build(failing, name, on_build_logs=logs.append)
    message = str(caught.value)
    assert "step 2" in message and FAIL_CMD in message and "code 3" in message, message
    messages = [entry.message for entry in logs]
    assert "about to fail" in messages, "\n".join(messages)
    assert any(entry.level == "error" and FAIL_CMD in entry.message for entry in logs), "\n".join(messages)
    assert f"RUN {FAIL_CMD}" in messages and "finalizing the template" not in messages
    with pytest.raises(e2b.SandboxException, match=r"^400: .*no ready build.*failed") as refused:
        e2b.Sandbox.create(name, timeout=60)
    assert FAIL_CMD in str(refused.value), "the refusal does not say why the build failed"
