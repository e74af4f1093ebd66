"""What ``/init`` configures and every handler reads: access token, env vars, default user.

Tokens: ``/init`` may set or replace the access token only as E2B's envd allows (see
``may_set_token``): the host vouches for the new sandbox's token through a channel only
the VMM writes (its SHA-512 in a QEMU fw_cfg file, the counterpart of E2B's MMDS
``accessTokenHash``), so whoever reaches port 49983 first cannot take a sandbox over.

The state is shared by all request threads, so it is replaced field by field under a lock
and read through ``snapshot()``, which returns a consistent frozen copy. Users are looked
up in the guest's passwd database on every call, so users created by a command after boot
are usable at once.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import pwd
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from .connect import Code, RpcError

FALLBACK_USER = "root"
HOST_TOKEN_HASH_PATH = "/sys/firmware/qemu_fw_cfg/by_name/opt/e2b/envd-token-hash/raw"
"""Where the host vouches for the sandbox's token: a QEMU fw_cfg file (module qemu_fw_cfg)."""
NO_TOKEN_HASH = hashlib.sha512(b"").hexdigest()


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

    def __init__(self, token_hash_path: str = HOST_TOKEN_HASH_PATH) -> None:
        self._lock = threading.Lock()
        self._settings = Settings()
        self._token_hash_path = token_hash_path

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
        return presented is not None and _same(presented, token)

    def vouched_token_hash(self) -> str | None:
        """The SHA-512 (hex) of the token the host set for this sandbox, or None without one.

        The host writes it where only the VMM can: a QEMU ``fw_cfg`` file (read fresh from
        the device on every call, so a restored snapshot sees the new sandbox's value) or,
        under Firecracker, MMDS. The hash of the empty string means "no token".
        """
        try:
            with open(self._token_hash_path, "rb") as source:
                value = source.read(256).decode("ascii", "replace").strip().lower()
        except OSError:
            return None
        if value == NO_TOKEN_HASH or len(value) != len(NO_TOKEN_HASH):
            return None
        return value

    def may_set_token(self, new_token: str, presented: str | None) -> bool:
        """Whether ``/init`` may make ``new_token`` the access token (E2B envd's rule).

        Allowed when it is the current token, when the caller proves it knows the current
        one, when the host channel vouches for it; and, only where there is no host channel
        and no token yet, to whoever comes first (a first setup without a host channel).
        """
        current = self.snapshot().access_token
        if current is not None and (
            _same(new_token, current) or (presented is not None and _same(presented, current))
        ):
            return True
        vouched = self.vouched_token_hash()
        if vouched is not None:
            return _same(hashlib.sha512(new_token.encode()).hexdigest(), vouched)
        return current is None

    def resolve_user(self, requested: str | None) -> User:
        """The user a call runs as: the requested one, else /init's default, else root."""
        name = requested or self.snapshot().default_user or FALLBACK_USER
        return lookup_user(name)


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


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
