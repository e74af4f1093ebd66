"""Filesystem entries as ``filesystem.EntryInfo`` messages, and the operations on them.

Every function takes an absolute path (``state.resolve_path`` made it so) and raises
``RpcError`` with the code the SDK branches on: ``not_found`` for a missing path,
``already_exists`` from ``make_dir``, ``invalid_argument`` for a path of the wrong type,
``permission_denied`` when the kernel refuses.

A symlink is described by its target's type with ``is_symlink`` set and
``symlink_target`` holding the resolved path, as the current envd does; a dangling one
has type ``FILE_TYPE_SYMLINK``.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import shutil
import stat
from collections.abc import Callable, Iterable
from typing import TypeVar

from .codec import Message
from .connect import Code, RpcError

FILE_TYPE_FILE = 1
FILE_TYPE_DIRECTORY = 2
FILE_TYPE_SYMLINK = 3

_T = TypeVar("_T")


def os_call(what: str, path: str, action: Callable[[], _T]) -> _T:
    """Run ``action``, turning its OSError into the RpcError a client can act on."""
    try:
        return action()
    except FileNotFoundError as exc:
        raise RpcError(Code.NOT_FOUND, f"{what} {path!r}: no such file or directory") from exc
    except FileExistsError as exc:
        raise RpcError(Code.ALREADY_EXISTS, f"{what} {path!r}: already exists") from exc
    except PermissionError as exc:
        raise RpcError(Code.PERMISSION_DENIED, f"{what} {path!r}: permission denied") from exc
    except NotADirectoryError as exc:
        raise RpcError(Code.INVALID_ARGUMENT, f"{what} {path!r}: a parent is not a directory") from exc
    except IsADirectoryError as exc:
        raise RpcError(Code.INVALID_ARGUMENT, f"{what} {path!r}: is a directory") from exc
    except OSError as exc:
        code = Code.RESOURCE_EXHAUSTED if exc.errno == errno.ENOSPC else Code.INTERNAL
        raise RpcError(code, f"{what} {path!r}: {exc.strerror or exc}") from exc


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
    return entry


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
