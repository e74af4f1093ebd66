"""What ``/init`` configures and every handler reads: access token, env vars, default user.

The state is shared by all request threads, so it is replaced field by field under a lock
and read through ``snapshot()``, which returns a consistent frozen copy. Users are looked
up in the guest's passwd database on every call, so users created by a command after boot
are usable at once.
"""

from __future__ import annotations

import hmac
import os
import pwd
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from .connect import Code, RpcError

FALLBACK_USER = "root"


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: str
    shell: str


@dataclass(frozen=True)
class Settings:
    access_token: str | None = None
    env_vars: Mapping[str, str] = field(default_factory=dict)
    default_user: str | None = None
    default_workdir: str | None = None


class AgentState:
    """The agent's mutable configuration; every method is thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._settings = Settings()

    def snapshot(self) -> Settings:
        with self._lock:
            return self._settings

    def update(
        self,
        *,
        access_token: str | None = None,
        env_vars: Mapping[str, str] | None = None,
        default_user: str | None = None,
        default_workdir: str | None = None,
    ) -> None:
        """Merge ``env_vars`` into the current set and replace each other value that is given."""
        with self._lock:
            current = self._settings
            self._settings = replace(
                current,
                access_token=current.access_token if access_token is None else access_token,
                env_vars={**current.env_vars, **(env_vars or {})},
                default_user=default_user or current.default_user,
                default_workdir=default_workdir or current.default_workdir,
            )

    def token_matches(self, presented: str | None) -> bool:
        """True when no token is set, or ``presented`` equals it (compared in constant time)."""
        token = self.snapshot().access_token
        if token is None:
            return True
        return presented is not None and hmac.compare_digest(presented.encode(), token.encode())

    def resolve_user(self, requested: str | None) -> User:
        """The user a call runs as: the requested one, else /init's default, else root."""
        name = requested or self.snapshot().default_user or FALLBACK_USER
        return lookup_user(name)


def lookup_user(name: str) -> User:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise RpcError(
            Code.UNAUTHENTICATED, f"invalid user: {name!r} does not exist in the sandbox"
        ) from None
    return User(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir or "/", entry.pw_shell or "/bin/sh")


def resolve_path(path: str, user: User) -> str:
    """An absolute, normalized path: ``~`` and relative paths start at the user's home."""
    if not path:
        raise RpcError(Code.INVALID_ARGUMENT, "path is empty: give an absolute path or one relative to home")
    if path == "~" or path.startswith("~/"):
        path = user.home + path[1:]
    elif not path.startswith("/"):
        path = os.path.join(user.home, path)
    return os.path.normpath(path)


def process_environment(user: User, settings: Settings, extra: Mapping[str, str]) -> dict[str, str]:
    """The environment of a started process: agent's own, the user's, /init's, then the call's."""
    env = dict(os.environ)
    env.update({"HOME": user.home, "USER": user.name, "LOGNAME": user.name, "SHELL": user.shell})
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env.update(settings.env_vars)
    env.update(extra)
    return env
