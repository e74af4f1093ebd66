"""Layer keys of template builds (facts 1.5) and the step checks that run before any VM starts.

The original indexes its build cache by SHA-256 hex of ``baseKey;key1;key2...``: each layer's
key is chained from its parent's, so an unchanged prefix of steps maps to the same keys and
is reused, and anything a step runs with (its type, arguments, COPY files) is in its key.
``force`` only skips the lookup: a forced layer is recorded under the same key, so the next
unforced build reuses it.
"""

from __future__ import annotations

import hashlib
import re
import uuid

import grpc
import pytest

from ember.errors import UsageError
from ember.orchestrator.manager import OrchestratorError
from ember.orchestrator.templates import spec_from_request
from ember.rpc import template_manager_pb2 as tpb
from ember.templates import FromImage, FromTemplate, Step, StepType, base_hash, layer_hash

FILES_A = "a" * 64
FILES_B = "b" * 64
PARENT = hashlib.sha256(b"some base layer").hexdigest()
OTHER_PARENT = hashlib.sha256(b"another base layer").hexdigest()
BASE_BUILD = uuid.UUID("0d9c8b7a-6f5e-4d3c-8b2a-19f8e7d6c5b4")


def _chain(parent: str, steps: list[Step]) -> list[str]:
    keys = []
    for step in steps:
        parent = layer_hash(parent, step)
        keys.append(parent)
    return keys


def test_the_same_parent_and_step_give_the_same_sha256_hex_key() -> None:
    first = layer_hash(PARENT, Step.parse("RUN", ["pip install requests"]))
    again = layer_hash(PARENT, Step.parse("RUN", ["pip install requests"]))
    assert first == again
    assert re.fullmatch(r"[0-9a-f]{64}", first)
    # the step type is matched as the SDK may spell it
    assert layer_hash(PARENT, Step.parse("run", ["pip install requests"])) == first


def test_the_parent_layer_is_part_of_the_key() -> None:
    step = Step.parse("RUN", ["echo hi"])
    assert layer_hash(PARENT, step) != layer_hash(OTHER_PARENT, step)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (("RUN", ["echo hi"]), ("RUN", ["echo hello"])),
        (("RUN", ["echo hi"]), ("RUN", ["echo hi", "alice"])),
        (("RUN", ["echo hi", "alice"]), ("RUN", ["echo hi", "bob"])),
        # a command and a user are two arguments, not one string: no collision when joined
        (("RUN", ["echo hi", "root"]), ("RUN", ["echo hi root"])),
        (("ENV", ["A", "1"]), ("ENV", ["A", "2"])),
        (("ENV", ["A", "1", "B", "2"]), ("ENV", ["B", "2", "A", "1"])),
        (("WORKDIR", ["/srv"]), ("WORKDIR", ["/opt"])),
        (("USER", ["alice"]), ("USER", ["bob"])),
    ],
)
def test_a_change_to_the_arguments_changes_the_key(
    one: tuple[str, list[str]], other: tuple[str, list[str]]
) -> None:
    assert layer_hash(PARENT, Step.parse(*one)) != layer_hash(PARENT, Step.parse(*other))


def test_the_step_type_is_part_of_the_key() -> None:
    # the same arguments under two types are two different layers
    keys = {
        layer_hash(PARENT, Step.parse("RUN", ["/srv"])),
        layer_hash(PARENT, Step.parse("WORKDIR", ["/srv"])),
    }
    assert len(keys) == 2
    assert layer_hash(PARENT, Step.parse("USER", ["alice"])) != layer_hash(
        PARENT, Step.parse("RUN", ["alice"])
    )


def test_the_files_of_a_copy_step_are_part_of_the_key() -> None:
    """New files uploaded under the same COPY arguments must not be served from the cache."""
    old = Step.parse("COPY", ["app", "/srv/"], FILES_A)
    new = Step.parse("COPY", ["app", "/srv/"], FILES_B)
    assert layer_hash(PARENT, old) != layer_hash(PARENT, new)
    assert layer_hash(PARENT, old) == layer_hash(PARENT, Step.parse("COPY", ["app", "/srv/"], FILES_A))


def test_force_is_not_part_of_the_key() -> None:
    """A forced step is rebuilt and recorded under its usual key, so later builds reuse it."""
    step = Step.parse("RUN", ["make"])
    forced = Step.parse("RUN", ["make"], force=True)
    assert forced.force and not step.force
    assert layer_hash(PARENT, forced) == layer_hash(PARENT, step)


def test_keys_are_chained_so_an_unchanged_prefix_keeps_its_keys() -> None:
    steps = [
        Step.parse("ENV", ["MODE", "dev"]),
        Step.parse("RUN", ["pip install -r requirements.txt"]),
        Step.parse("COPY", [".", "/srv/app"], FILES_A),
        Step.parse("RUN", ["python -m compileall /srv/app"]),
    ]
    before = _chain(PARENT, steps)
    changed = _chain(PARENT, [*steps[:2], Step.parse("COPY", [".", "/srv/app"], FILES_B), steps[3]])
    assert changed[:2] == before[:2]
    assert changed[2] != before[2]
    # the last step is unchanged, yet its layer is not the same: it ran on other files
    assert changed[3] != before[3]
    # an environment set by an earlier ENV step changes every later layer, VM step or not
    other_env = _chain(PARENT, [Step.parse("ENV", ["MODE", "prod"]), *steps[1:]])
    assert all(a != b for a, b in zip(before, other_env, strict=True))


def test_the_order_of_steps_is_part_of_the_key() -> None:
    a, b = Step.parse("RUN", ["echo a"]), Step.parse("RUN", ["echo b"])
    assert _chain(PARENT, [a, b])[-1] != _chain(PARENT, [b, a])[-1]


def test_the_base_key_depends_on_the_source_and_an_image_s_machine() -> None:
    image = FromImage("python:3.12")
    assert re.fullmatch(r"[0-9a-f]{64}", base_hash(image, "2:1024:1024"))
    assert base_hash(image, "2:1024:1024") == base_hash(FromImage("python:3.12"), "2:1024:1024")
    assert base_hash(image, "2:1024:1024") != base_hash(FromImage("python:3.13"), "2:1024:1024")
    # an image is booted into its first build with the template's machine: another size, another layer
    assert base_hash(image, "2:1024:1024") != base_hash(image, "2:1024:2048")
    # credentials are how the image is fetched, not what it is
    assert base_hash(FromImage("r.example:5000/app:1", "u", "p"), "m") == base_hash(
        FromImage("r.example:5000/app:1"), "m"
    )
    # a template source is its build, whatever alias named it
    assert base_hash(FromTemplate(BASE_BUILD, "base"), "") == base_hash(FromTemplate(BASE_BUILD, "mine"), "")
    assert base_hash(FromTemplate(BASE_BUILD), "") != base_hash(FromTemplate(uuid.uuid4()), "")
    assert base_hash(FromTemplate(BASE_BUILD), "") != base_hash(FromImage(str(BASE_BUILD)), "")


@pytest.mark.parametrize(
    ("kind", "args", "files_hash", "message"),
    [
        ("FROM", ["debian"], None, "unknown step type 'FROM': use one of RUN, COPY, ENV, WORKDIR, USER"),
        ("", ["echo"], None, "unknown step type ''"),
        ("RUN", [], None, "a RUN step needs a command"),
        ("RUN", ["   "], None, "a RUN step needs a command"),
        ("RUN", ["echo", "root", "extra"], None, "a RUN step needs a command"),
        ("RUN", ["echo", "Not A User"], None, "user 'Not A User' of a RUN step is not a valid user name"),
        ("COPY", ["app"], FILES_A, "a COPY step needs a source and a destination"),
        ("COPY", ["", "/srv"], FILES_A, "a COPY step needs a source and a destination"),
        ("COPY", ["app", "/srv"], None, "a COPY step needs the filesHash of its uploaded files"),
        ("COPY", ["app", "/srv"], "not-a-hash", "a COPY step needs the filesHash of its uploaded files"),
        (
            "COPY",
            ["app", "/srv", "", "rwxr-xr-x"],
            FILES_A,
            "COPY mode 'rwxr-xr-x' is not an octal file mode",
        ),
        ("ENV", [], None, "an ENV step needs key/value pairs"),
        ("ENV", ["A", "1", "B"], None, "an ENV step needs key/value pairs"),
        ("ENV", ["1A", "x"], None, "ENV name '1A' is not a valid environment variable name"),
        ("WORKDIR", ["srv/app"], None, "a WORKDIR step needs one absolute path"),
        ("WORKDIR", [], None, "a WORKDIR step needs one absolute path"),
        ("USER", [], None, "a USER step needs one user name"),
        ("USER", ["root; rm -rf /"], None, "a USER step needs one user name"),
    ],
)
def test_a_step_that_cannot_run_is_refused_with_what_is_wrong(
    kind: str, args: list[str], files_hash: str | None, message: str
) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        Step.parse(kind, args, files_hash)


def test_steps_the_sdk_sends_are_accepted() -> None:
    assert Step.parse("COPY", ["app", "/srv/", "", ""], FILES_A).user is None
    assert Step.parse("COPY", ["app", "/srv/", "alice", "0755"], FILES_A).user == "alice"
    assert Step.parse("RUN", ["id", "alice"]).user == "alice"
    assert Step.parse("ENV", ["PATH", "/opt/bin:/usr/bin", "_X", ""]).type is StepType.ENV
    assert not Step.parse("WORKDIR", ["/srv"]).needs_vm
    assert Step.parse("RUN", ["true"]).needs_vm


def _request(**fields: object) -> tpb.TemplateCreateRequest:
    config = tpb.TemplateConfig(
        templateID="t",
        buildID=str(uuid.uuid4()),
        fromTemplate=tpb.FromTemplateConfig(buildID=str(BASE_BUILD)),
    )
    for name, value in fields.items():
        if name == "steps":
            config.steps.extend(value)  # type: ignore[arg-type]
        else:
            setattr(config, name, value)
    return tpb.TemplateCreateRequest(template=config)


def test_a_template_create_with_a_bad_step_is_an_invalid_argument_naming_it() -> None:
    with pytest.raises(OrchestratorError, match="a WORKDIR step needs one absolute path") as caught:
        spec_from_request(_request(steps=[tpb.TemplateStep(type="WORKDIR", args=["relative"])]))
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT


def test_a_template_create_without_a_source_or_with_a_bad_build_id_is_refused() -> None:
    no_source = _request()
    no_source.template.ClearField("fromTemplate")
    with pytest.raises(OrchestratorError, match="needs fromImage or fromTemplate") as caught:
        spec_from_request(no_source)
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(OrchestratorError, match="buildID 'nope' is not a UUID"):
        spec_from_request(_request(buildID="nope"))


def test_a_template_create_becomes_the_spec_whose_steps_are_keyed() -> None:
    request = _request(
        steps=[
            tpb.TemplateStep(type="RUN", args=["echo hi"], force=True),
            tpb.TemplateStep(type="COPY", args=["a", "/b"], filesHash=FILES_A),
        ]
    )
    spec = spec_from_request(request)
    assert spec.source == FromTemplate(BASE_BUILD)
    assert spec.steps == (
        Step(StepType.RUN, ("echo hi",), None, True),
        Step(StepType.COPY, ("a", "/b"), FILES_A, False),
    )
