"""Which sandbox and port a request to the node proxy is for: pure parsing, no I/O.

The rules are E2B's, shared by its edge proxy and its per-node proxy, so a client written for
E2B (the SDK with ``E2B_SANDBOX_URL``, a browser on ``https://{port}-{id}.{domain}``) reaches
the same place through ember:

1. **Headers first**, when the Host names no sandbox (``localhost``, an IP literal, or
   ``sandbox.<domain>`` for a configured domain) and at least one of ``E2b-Sandbox-Id`` /
   ``E2b-Sandbox-Port`` is present. Both are then required.
2. Otherwise the **Host**: the label before the first dot is ``{port}-{sandboxID}``; anything
   after a second ``-`` (the client id of old-style hosts) is ignored.
3. The sandbox id must be lowercase letters and digits.

Failures raise ``RouteError``, whose ``message`` is the exact text the original answers with
in its 400 response. ``is_envd_control_route`` is the second gate: envd's control endpoints
(``/init`` and friends) belong to the orchestrator, never to a sandbox URL.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

from ember.errors import EmberError

ENVD_PORT = 49983
SANDBOX_ID_HEADER = "E2b-Sandbox-Id"
SANDBOX_PORT_HEADER = "E2b-Sandbox-Port"

MISSING_HEADER = "missing header"
INVALID_SANDBOX_PORT = "Invalid sandbox port"
INVALID_HOST = "Invalid host"
INVALID_SANDBOX_ID = "Invalid sandbox ID"

# envd endpoints only the orchestrator may call (over the slot's host IP, not through the proxy).
ENVD_CONTROL_ROUTES = frozenset(
    {"/init", "/upgrade", "/freeze", "/unfreeze", "/fsfreeze", "/fsthaw", "/collapse"}
)

TRAFFIC_TOKEN_HEADER = "e2b-traffic-access-token"
RESERVED_ROUTE_MESSAGE = (
    "This endpoint is reserved for the E2B control plane and is not reachable through the sandbox URL"
)
SANDBOX_NOT_FOUND_MESSAGE = "The sandbox was not found"
TOKEN_MISSING_MESSAGE = (
    f"Sandbox is secured with traffic access token. Token header '{TRAFFIC_TOKEN_HEADER}' is missing"
)
TOKEN_INVALID_MESSAGE = (
    "Sandbox is secured with traffic access token. "
    f"Provided token in header '{TRAFFIC_TOKEN_HEADER}' is invalid"
)

_SANDBOX_ID = re.compile(r"[a-z0-9]+")
# What Go's strconv.Atoi accepts; the range check below keeps the result a TCP port.
_PORT = re.compile(r"[+-]?[0-9]+")
_MAX_PORT = 65535


class RouteError(EmberError):
    """The request names no sandbox, or names one badly; ``message`` is the 400 response text."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


@dataclass(frozen=True)
class Route:
    """The sandbox and the port inside it that a request is for."""

    sandbox_id: str
    port: int


def route_request(host: str, headers: Mapping[str, str], domain: str | None) -> Route:
    """The route for a request with this Host header value and headers; raises RouteError.

    ``headers`` is looked up with the canonical names above, so pass a case-insensitive
    mapping (aiohttp's ``request.headers`` is one). ``domain`` is the sandbox domain
    (``e2b.app``); None or empty disables the ``sandbox.<domain>`` form.
    """
    sandbox_id = headers.get(SANDBOX_ID_HEADER)
    port = headers.get(SANDBOX_PORT_HEADER)
    if (sandbox_id is not None or port is not None) and _host_names_no_sandbox(host, domain):
        if sandbox_id is None or port is None:
            raise RouteError(MISSING_HEADER)
        return Route(_checked_sandbox_id(sandbox_id), _parse_port(port))
    label, dot, _ = host.partition(".")
    parts = label.split("-")
    if not dot or len(parts) < 2:
        raise RouteError(INVALID_HOST)
    return Route(_checked_sandbox_id(parts[1]), _parse_port(parts[0]))


def _host_names_no_sandbox(host: str, domain: str | None) -> bool:
    """localhost, an IP literal or ``sandbox.<domain>``, with or without a :port."""
    name = _strip_port(host).lower()
    if name == "localhost" or (domain and name == f"sandbox.{domain.lower()}"):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _strip_port(host: str) -> str:
    if host.startswith("["):  # [v6]:port
        return host[1:].partition("]")[0]
    if host.count(":") == 1:  # name:port; a bare v6 address has several colons
        return host.partition(":")[0]
    return host


def _parse_port(value: str) -> int:
    if not _PORT.fullmatch(value) or not 0 <= int(value) <= _MAX_PORT:
        raise RouteError(INVALID_SANDBOX_PORT)
    return int(value)


def _checked_sandbox_id(value: str) -> str:
    if not _SANDBOX_ID.fullmatch(value):
        raise RouteError(INVALID_SANDBOX_ID)
    return value


def clean_path(path: str) -> str:
    """Go's ``path.Clean``: one slash between elements, ``.`` and ``..`` resolved, no trailing slash.

    ``..`` never climbs above the root, and an empty path becomes ``.``. Python's
    ``posixpath.normpath`` differs where it matters here: it keeps a leading ``//``.
    """
    rooted = path.startswith("/")
    elements: list[str] = []
    for element in path.split("/"):
        if element in ("", "."):
            continue
        if element == "..":
            if elements and elements[-1] != "..":
                elements.pop()
            elif not rooted:
                elements.append("..")
            continue
        elements.append(element)
    cleaned = "/".join(elements)
    if rooted:
        return "/" + cleaned
    return cleaned or "."


def is_envd_control_route(route: Route, raw_path: str) -> bool:
    """Whether a request for ``raw_path`` (percent-encoded, no query) is an envd control call.

    Compared after percent-decoding and ``clean_path``, so ``/%69nit``, ``//init``, ``/init/``
    and ``/a/../init`` are all ``/init``: envd's router would take each of them to it.
    """
    if route.port != ENVD_PORT:
        return False
    return clean_path(urllib.parse.unquote(raw_path)) in ENVD_CONTROL_ROUTES
