"""Filesystem entries as ``filesystem.EntryInfo`` messages, and the operations on them.

Every function takes an absolute path (``state.resolve_path`` made it so) and raises
``RpcError`` with the code the SDK branches on: ``not_found`` for a missing path,
``already_exists`` from ``make_dir``, ``invalid_argument`` for a path of the wrong type,
``permission_denied`` when the kernel refuses.

A symlink is described by its target's type with ``is_symlink`` set and
``symlink_target`` holding the resolved path, as the current envd does; a dangling one
has type ``FILE_TYPE_SYMLINK``.

File metadata (envd 0.6.2) is a file's ``user.e2b.<key>`` extended attributes: uploads
replace the whole set (``write_metadata``), and every EntryInfo carries it, prefix
stripped, in ``metadata``. A filesystem without user xattrs simply has none.

Watching refuses directories on network filesystems (NFS, SMB/CIFS, FUSE) unless the
caller allows them, as E2B's envd does; ``network_mount_type`` finds the filesystem type
of a path from ``/proc/self/mountinfo``.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import re
import shutil
import stat
from collections.abc import Callable, Iterable
from typing import TypeVar

from .codec import Message
from .connect import Code, RpcError

FILE_TYPE_FILE = 1
FILE_TYPE_DIRECTORY = 2
FILE_TYPE_SYMLINK = 3
METADATA_XATTR_PREFIX = "user.e2b."
MAX_XATTR_NAME_BYTES = 255
MAX_METADATA_VALUE_BYTES = 64 * 1024
NETWORK_FILESYSTEMS = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse", "fuseblk"})
_METADATA_KEY = re.compile(r"\A[A-Za-z0-9!#$%&'*+\-.^_`|~]+\Z")

_T = TypeVar("_T")


def os_call(what: str, path: str, action: Callable[[], _T]) -> _T:
    """Run ``action``, turning its OSError into the RpcError a client can act on."""
    try:
        return action()
    except OSError as exc:
        raise os_error(what, path, exc) from exc


def os_error(what: str, path: str, exc: OSError) -> RpcError:
    """The RpcError for an OSError of ``what`` on ``path``: the code the SDK branches on."""
    if isinstance(exc, FileNotFoundError):
        return RpcError(Code.NOT_FOUND, f"{what} {path!r}: no such file or directory")
    if isinstance(exc, FileExistsError):
        return RpcError(Code.ALREADY_EXISTS, f"{what} {path!r}: already exists")
    if isinstance(exc, PermissionError):
        return RpcError(Code.PERMISSION_DENIED, f"{what} {path!r}: permission denied")
    if isinstance(exc, NotADirectoryError):
        return RpcError(Code.INVALID_ARGUMENT, f"{what} {path!r}: a parent is not a directory")
    if isinstance(exc, IsADirectoryError):
        return RpcError(Code.INVALID_ARGUMENT, f"{what} {path!r}: is a directory")
    code = Code.RESOURCE_EXHAUSTED if exc.errno in (errno.ENOSPC, errno.EDQUOT) else Code.INTERNAL
    return RpcError(code, f"{what} {path!r}: {exc.strerror or exc}")


def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _type_of(mode: int) -> int:
    if stat.S_ISDIR(mode):
        return FILE_TYPE_DIRECTORY
    return FILE_TYPE_FILE


def entry_info(path: str) -> Message:
    """The EntryInfo of ``path`` (not following a final symlink for its identity)."""
    link_stat = os_call("stat", path, lambda: os.lstat(path))
    entry: Message = {"name": os.path.basename(path) or "/", "path": path}
    info = link_stat
    file_type = _type_of(link_stat.st_mode)
    if stat.S_ISLNK(link_stat.st_mode):
        entry["is_symlink"] = True
        entry["symlink_target"] = os.path.realpath(path)
        try:
            info = os.stat(path)
            file_type = _type_of(info.st_mode)
        except OSError:
            file_type = FILE_TYPE_SYMLINK
    entry.update(
        type=file_type,
        size=info.st_size,
        mode=stat.S_IMODE(info.st_mode),
        permissions=stat.filemode(info.st_mode),
        owner=_owner(info.st_uid),
        group=_group(info.st_gid),
        modified_time={
            "seconds": info.st_mtime_ns // 1_000_000_000,
            "nanos": info.st_mtime_ns % 1_000_000_000,
        },
    )
    metadata = read_metadata(path)
    if metadata:
        entry["metadata"] = metadata
    return entry


def read_metadata(path: str) -> dict[str, str]:
    """The file's ``user.e2b.*`` attributes by key (prefix stripped); {} when it has none or no xattrs."""
    try:
        names = os.listxattr(path)
    except OSError:
        return {}
    metadata: dict[str, str] = {}
    for name in names:
        if name.startswith(METADATA_XATTR_PREFIX):
            try:
                metadata[name[len(METADATA_XATTR_PREFIX) :]] = os.getxattr(path, name).decode(
                    "utf-8", "replace"
                )
            except OSError:
                continue
    return metadata


def check_metadata(metadata: dict[str, str]) -> None:
    """Raise ``invalid_argument`` for a key or value that cannot be stored as an attribute."""
    for key, value in metadata.items():
        if not _METADATA_KEY.match(key):
            raise RpcError(
                Code.INVALID_ARGUMENT,
                f"metadata key {key!r}: use letters, digits and !#$%&'*+-.^_`|~ only",
            )
        if len((METADATA_XATTR_PREFIX + key).encode()) > MAX_XATTR_NAME_BYTES:
            raise RpcError(
                Code.INVALID_ARGUMENT, f"metadata key {key[:40]!r}...: longer than the xattr limit"
            )
        if len(value.encode()) > MAX_METADATA_VALUE_BYTES:
            raise RpcError(
                Code.INVALID_ARGUMENT,
                f"metadata value of {key!r} is larger than {MAX_METADATA_VALUE_BYTES} bytes",
            )


def write_metadata(path: str, metadata: dict[str, str]) -> bool:
    """Make ``metadata`` the file's whole ``user.e2b.*`` set; False when the filesystem has no xattrs."""
    try:
        stale = [name for name in os.listxattr(path) if name.startswith(METADATA_XATTR_PREFIX)]
        for name in stale:
            if name[len(METADATA_XATTR_PREFIX) :] not in metadata:
                os.removexattr(path, name)
        for key, value in metadata.items():
            os.setxattr(path, METADATA_XATTR_PREFIX + key, value.encode())
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return False
        raise os_error("write metadata of", path, exc) from exc
    return True


def _unescape_mount_field(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), field)


def network_mount_type(path: str, mountinfo: str) -> str | None:
    """The filesystem type of ``path`` when it is a network one (per ``mountinfo``), else None.

    ``path`` must be absolute and resolved; the mount with the longest mount point that
    contains it decides (the later one when two share a mount point).
    """
    best_point, best_type = "", ""
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields[6:]:
            continue
        separator = fields.index("-", 6)  # the optional fields end at a lone "-"
        if separator + 1 >= len(fields):
            continue
        point, fstype = _unescape_mount_field(fields[4]), fields[separator + 1]
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best_point):
            best_point, best_type = point, fstype
    base = best_type.split(".", 1)[0]
    return best_type if best_type in NETWORK_FILESYSTEMS or base == "fuse" else None


def check_watchable(
    path: str, allow_network_mounts: bool, mountinfo_path: str = "/proc/self/mountinfo"
) -> None:
    """Refuse (``invalid_argument``) a directory on a network filesystem unless it is allowed."""
    if allow_network_mounts or not os.path.isdir(path):
        return  # a missing path is the watcher's to report
    try:
        with open(mountinfo_path) as source:
            mountinfo = source.read()
    except OSError:
        return
    fstype = network_mount_type(os.path.realpath(path), mountinfo)
    if fstype is not None:
        raise RpcError(
            Code.INVALID_ARGUMENT,
            f"cannot watch {path!r}: it is on a network filesystem ({fstype}); "
            "pass allow_network_mounts to watch it anyway",
        )


def list_dir(path: str, depth: int) -> list[Message]:
    """Entries under ``path`` down to ``depth`` levels (0 counts as 1); symlinks are not followed."""
    if not stat.S_ISDIR(os_call("list", path, lambda: os.stat(path)).st_mode):
        raise RpcError(Code.INVALID_ARGUMENT, f"list {path!r}: not a directory")
    entries: list[Message] = []
    _walk(path, max(depth, 1), entries)
    return entries


def _walk(path: str, depth: int, out: list[Message]) -> None:
    names = sorted(os_call("list", path, lambda: os.listdir(path)))
    for name in names:
        child = os.path.join(path, name)
        try:
            entry = entry_info(child)
        except RpcError:
            continue
        out.append(entry)
        if depth > 1 and entry["type"] == FILE_TYPE_DIRECTORY and not entry.get("is_symlink"):
            _walk(child, depth - 1, out)


def make_dir(path: str, uid: int, gid: int) -> Message:
    """Create ``path`` and missing parents, owned by the calling user."""
    if os.path.lexists(path):
        raise RpcError(Code.ALREADY_EXISTS, f"make dir {path!r}: already exists")
    created = _missing_ancestors(path)
    os_call("make dir", path, lambda: os.makedirs(path))
    for directory in created:
        _chown(directory, uid, gid)
    return entry_info(path)


def _missing_ancestors(path: str) -> list[str]:
    missing = []
    while path and not os.path.lexists(path):
        missing.append(path)
        path = os.path.dirname(path)
    return missing


def _chown(path: str, uid: int, gid: int) -> None:
    if os.geteuid() == 0:
        os.chown(path, uid, gid, follow_symlinks=False)


def ensure_parent(path: str, uid: int, gid: int) -> None:
    """Create the missing parent directories of ``path``, owned by the calling user."""
    parent = os.path.dirname(path)
    created = _missing_ancestors(parent)
    os_call("create parent of", path, lambda: os.makedirs(parent, exist_ok=True))
    for directory in created:
        _chown(directory, uid, gid)


def move(source: str, destination: str, uid: int, gid: int) -> Message:
    os_call("move", source, lambda: os.lstat(source))
    ensure_parent(destination, uid, gid)
    os_call("move", source, lambda: os.rename(source, destination))
    return entry_info(destination)


def remove(path: str) -> None:
    info = os_call("remove", path, lambda: os.lstat(path))
    if stat.S_ISDIR(info.st_mode):
        os_call("remove", path, lambda: shutil.rmtree(path))
    else:
        os_call("remove", path, lambda: os.unlink(path))


def write_file(path: str, data_pieces: Iterable[bytes], uid: int, gid: int) -> Message:
    """Write a file (replacing its content), creating parents; return its ``/files`` record."""
    if os.path.isdir(path):
        raise RpcError(Code.INVALID_ARGUMENT, f"write {path!r}: is a directory")
    ensure_parent(path, uid, gid)

    def write() -> None:
        with open(path, "wb") as handle:
            for piece in data_pieces:
                handle.write(piece)

    os_call("write", path, write)
    _chown(path, uid, gid)
    return {"path": path, "name": os.path.basename(path), "type": "file"}
