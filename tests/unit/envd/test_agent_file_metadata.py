"""File metadata as user.e2b.* xattrs, X-Metadata-* headers, and network-mount detection for watches."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ember.envd.agent import filesystem
from ember.envd.agent.connect import Code, RpcError
from ember.envd.agent.http_api import upload_metadata

MOUNTINFO = r"""22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
25 22 0:22 / /proc rw,nosuid shared:12 - proc proc rw
30 22 0:40 / /mnt/share rw,relatime shared:20 - nfs4 server:/export rw,vers=4.2
31 30 0:41 / /mnt/share/local rw - tmpfs tmpfs rw
32 22 0:42 / /mnt/with\040space rw - fuse.sshfs host:/x rw
33 22 0:43 / /mnt/smb rw master:3 - cifs //host/share rw
34 22 0:44 / /mnt/smb rw - ext4 /dev/vdb rw
"""


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/home/user", None),
        ("/mnt/share", "nfs4"),
        ("/mnt/share/deep/dir", "nfs4"),
        ("/mnt/shared", None),
        ("/mnt/share/local/x", None),
        ("/mnt/with space/x", "fuse.sshfs"),
        ("/mnt/smb/x", None),
    ],
)
def test_network_mount_type_uses_the_innermost_latest_mount(path: str, expected: str | None) -> None:
    assert filesystem.network_mount_type(path, MOUNTINFO) == expected


def test_a_local_directory_is_watchable(tmp_path: Path) -> None:
    filesystem.check_watchable(str(tmp_path), allow_network_mounts=False)
    filesystem.check_watchable("/nonexistent/ember", allow_network_mounts=False)


def test_a_directory_on_a_network_mount_is_refused_unless_allowed(tmp_path: Path) -> None:
    watched = tmp_path / "watched"
    watched.mkdir()
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(f"22 1 252:1 / / rw - ext4 /dev/vda rw\n40 22 0:50 / {watched} rw - nfs srv:/x rw\n")
    with pytest.raises(RpcError, match="network filesystem \\(nfs\\)") as caught:
        filesystem.check_watchable(str(watched), False, str(mountinfo))
    assert caught.value.code is Code.INVALID_ARGUMENT
    filesystem.check_watchable(str(watched), True, str(mountinfo))
    filesystem.check_watchable(str(tmp_path), False, str(mountinfo))


def test_metadata_headers_are_lowercased_and_stripped_of_their_prefix() -> None:
    headers = {"X-Metadata-Author": "a", "x-metadata-Purpose": "b", "X-Metadata-": "dropped", "Other": "c"}
    assert upload_metadata(headers) == {"author": "a", "purpose": "b"}


def test_metadata_round_trips_and_a_new_set_replaces_the_old(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_text("x")
    os.setxattr(target, "user.unrelated", b"stays")
    assert filesystem.write_metadata(str(target), {"a": "1", "b": "2"})
    assert filesystem.read_metadata(str(target)) == {"a": "1", "b": "2"}
    assert filesystem.entry_info(str(target))["metadata"] == {"a": "1", "b": "2"}
    assert filesystem.write_metadata(str(target), {"b": "3"})
    assert filesystem.read_metadata(str(target)) == {"b": "3"}
    filesystem.write_metadata(str(target), {})
    assert "metadata" not in filesystem.entry_info(str(target))
    assert os.listxattr(target) == ["user.unrelated"]


def test_read_metadata_of_a_missing_file_is_empty(tmp_path: Path) -> None:
    assert filesystem.read_metadata(str(tmp_path / "missing")) == {}


@pytest.mark.parametrize(
    ("metadata", "complaint"),
    [
        ({"bad key": "v"}, "use letters"),
        ({"k" * 250: "v"}, "xattr limit"),
        ({"k": "v" * 70_000}, "larger than"),
    ],
)
def test_metadata_that_cannot_be_an_xattr_is_invalid(metadata: dict[str, str], complaint: str) -> None:
    with pytest.raises(RpcError, match=complaint) as caught:
        filesystem.check_metadata(metadata)
    assert caught.value.code is Code.INVALID_ARGUMENT
